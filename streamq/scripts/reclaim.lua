#!lua flags=allow-oom
-- reclaim: take over messages idle past their task's visibility timeout.
-- XPENDING IDLE finds candidates anywhere in the PEL in one call (XAUTOCLAIM
-- examines only COUNT x 10 entries per call); each one is then claimed with
-- XCLAIM and its task's own timeout as min-idle-time, so a fresh heartbeat
-- between the two commands still wins. The claim adds a delivery, which is
-- read back with XPENDING (delivery counts come from Redis, invariant 5).
-- A pending entry whose message was deleted or trimmed has nothing left to
-- run: it goes to the DLQ with that reason instead of lingering forever.
--
-- KEYS[1] stream   KEYS[2] dlq stream   KEYS[3] events stream
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count   ARGV[4] min idle ms (smallest timeout)
-- ARGV[5] now ms   ARGV[6] events maxlen   ARGV[7] default visibility ms
-- ARGV[8..] pairs: task name, visibility ms
-- reply: {{id, {field, value, ...}, delivery count, previous owner}, ...}
local vis = {}
for i = 8, #ARGV, 2 do
  vis[ARGV[i]] = tonumber(ARGV[i + 1])
end
local default_vis = tonumber(ARGV[7])
local want = tonumber(ARGV[3])
local out = {}
-- Look at more candidates than we want: some may belong to tasks with longer timeouts.
local candidates = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[4], '-', '+', want * 4)
for _, p in ipairs(candidates) do
  if #out >= want then break end
  local id, owner, idle = p[1], p[2], tonumber(p[3])
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if not entry then
    redis.call('XADD', KEYS[2], '*', 'dlq_reason', 'message deleted or trimmed while pending',
      'dlq_origin', KEYS[1], 'dlq_origin_id', id, 'dlq_deliveries', p[4], 'dlq_ms', ARGV[5])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'dead', 'job', '',
      'msg', id, 'error', 'message deleted or trimmed while pending', 'ts', ARGV[5])
  else
    local fields = entry[2]
    local task = ''
    for f = 1, #fields - 1, 2 do
      if fields[f] == 'task' then task = fields[f + 1] end
    end
    local timeout = vis[task] or default_vis
    if idle >= timeout then
      local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], timeout, id)
      if claimed[1] then
        local now = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
        out[#out + 1] = {id, fields, now[4], owner}
        local job = ''
        for f = 1, #fields - 1, 2 do
          if fields[f] == 'id' then job = fields[f + 1] end
        end
        redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'kind', 'reclaimed',
          'job', job, 'task', task, 'msg', id, 'from', owner, 'worker', ARGV[2],
          'deliveries', now[4], 'idle_ms', idle, 'ts', ARGV[5])
      end
    end
  end
end
return out
