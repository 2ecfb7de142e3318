#!lua flags=allow-oom
-- promote: move due entries of the delayed set into their priority streams.
-- ZREM and XADD happen in one script, so two janitors racing cannot promote an
-- entry twice, and a janitor dying mid-way cannot lose one.
--
-- KEYS[1] delayed zset   KEYS[2] events stream   KEYS[3..n] priority streams
-- ARGV[1] now ms   ARGV[2] limit   ARGV[3] group   ARGV[4] events maxlen
-- ARGV[5..] priority names, in the order of KEYS[3..n]
-- A member is cjson [priority, field, value, ...]; an unknown priority (the
-- App's list changed) goes to the last (lowest) stream rather than being lost.
-- reply: number promoted
local stream_of = {}
for i = 5, #ARGV do
  stream_of[ARGV[i]] = KEYS[i - 2]
end
local lowest = KEYS[#KEYS]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local ok, entry = pcall(cjson.decode, member)
  redis.call('ZREM', KEYS[1], member)
  if ok and type(entry) == 'table' and #entry >= 3 then
    local priority = table.remove(entry, 1)
    local stream = stream_of[priority] or lowest
    if redis.call('EXISTS', stream) == 0 then
      redis.call('XGROUP', 'CREATE', stream, ARGV[3], '0', 'MKSTREAM')
    end
    local msg_id = redis.call('XADD', stream, '*', unpack(entry))
    local job, task = '', ''
    for f = 1, #entry - 1, 2 do
      if entry[f] == 'id' then job = entry[f + 1] elseif entry[f] == 'task' then task = entry[f + 1] end
    end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
      'kind', 'promoted', 'job', job, 'task', task, 'msg', msg_id, 'ts', ARGV[1])
  else
    -- Not ours or corrupt: keep it visible in the DLQ's neighbour, the events stream.
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
      'kind', 'dead', 'job', '', 'error', 'corrupt delayed entry dropped', 'raw', member,
      'ts', ARGV[1])
  end
end
return #due
