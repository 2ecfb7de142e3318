#!lua flags=allow-oom
-- cancelled: record that a running job stopped on a cancel request, fenced.
-- Only if the message is still pending to this consumer with the delivery
-- count the worker was given (DESIGN.md invariant 3), in this one script: XACK
-- it (nothing is retried, nothing goes to the DLQ), the job hash becomes
-- 'cancelled' with a TTL and indexes the 'cancelled' event ('ev:<event id>'),
-- and the job's request leaves the cancels zset. A repeated run (client retry)
-- finds the hash holding this delivery's outcome and changes nothing; a stale
-- worker's late call writes only a 'lost-ownership' event (indexed in a hash
-- that exists).
--
-- KEYS[1] stream   KEYS[2] events stream   KEYS[3] job hash   KEYS[4] cancels zset
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] msg id   ARGV[4] delivery count
-- ARGV[5] job id   ARGV[6] task   ARGV[7] attempt   ARGV[8] now ms
-- ARGV[9] result ttl ms   ARGV[10] duration ms
-- reply: 1 recorded, 2 recorded by an earlier run, 0 lost (not ours any more)
for i, key in ipairs(KEYS) do
  if i == 2 or i == 4 then
    local want = 'stream'
    if i == 4 then want = 'zset' end
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= want then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
    end
  end
end
local token = ARGV[3] .. '|' .. ARGV[2] .. '|' .. ARGV[4]
local read, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
local entry = read and pending[1]
local is_hash = redis.call('TYPE', KEYS[3])['ok'] == 'hash'
if entry and entry[2] == ARGV[2] and tonumber(entry[4]) == tonumber(ARGV[4]) then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  local event_id = redis.call('XADD', KEYS[2], '*', 'kind', 'cancelled', 'job', ARGV[5],
    'task', ARGV[6], 'attempt', ARGV[7], 'deliveries', ARGV[4], 'worker', ARGV[2],
    'duration_ms', ARGV[10], 'by', 'request', 'where', 'running', 'msg', ARGV[3],
    'ts', ARGV[8])
  if is_hash then
    redis.call('HSET', KEYS[3], 'status', 'cancelled', 'finished_ms', ARGV[8],
      'duration_ms', ARGV[10], 'outcome_msg', token, string.format('ev:%s', event_id),
      'cancelled')
    redis.call('PEXPIRE', KEYS[3], ARGV[9])
  end
  redis.call('ZREM', KEYS[4], ARGV[5])
  return 1
end
if is_hash and redis.call('HGET', KEYS[3], 'outcome_msg') == token then
  return 2
end
local event_id = redis.call('XADD', KEYS[2], '*', 'kind', 'lost-ownership', 'job', ARGV[5],
  'task', ARGV[6], 'attempt', ARGV[7], 'deliveries', ARGV[4], 'worker', ARGV[2],
  'duration_ms', ARGV[10], 'outcome', 'cancelled', 'ts', ARGV[8])
if is_hash then
  redis.call('HSET', KEYS[3], string.format('ev:%s', event_id), 'lost-ownership')
end
return 0
