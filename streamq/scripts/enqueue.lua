-- enqueue: add one job to its priority stream (or, when due later, to the
-- delayed set), write its job hash and an event.
-- Idempotent by job id: a second run (redis-py retrying after a lost reply)
-- finds the job hash and adds nothing (DESIGN.md invariant 9).
--
-- KEYS[1] priority stream   KEYS[2] job hash   KEYS[3] events stream   KEYS[4] delayed zset
-- KEYS[5..] every priority stream of the queue (only when ARGV[10] > 0)
-- ARGV[1] group   ARGV[2] job id   ARGV[3] task   ARGV[4] content type
-- ARGV[5] payload ARGV[6] now ms   ARGV[7] priority   ARGV[8] events maxlen
-- ARGV[9] due ms (0: now)   ARGV[10] max pending jobs in the queue (0: no limit)
-- ARGV[11..] optional extra entry fields as field, value pairs (per-call options)
-- reply: {1, stream id or 'delayed'} when added, {0, existing id} when the job existed,
--   {-1, depth} when the queue already holds max pending jobs (nothing written)
local existing = redis.call('HGET', KEYS[2], 'msg_id')
if existing then
  return {0, existing}
end
local limit = tonumber(ARGV[10])
if limit > 0 then
  -- Depth = unread + delivered-but-unacked in every priority stream, plus delayed.
  local depth = redis.call('ZCARD', KEYS[4])
  for i = 5, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
        local info = {}
        for f = 1, #g - 1, 2 do info[g[f]] = g[f + 1] end
        if info['name'] == ARGV[1] then
          local lag = info['lag']
          if type(lag) ~= 'number' then
            lag = redis.call('XLEN', KEYS[i])  -- unknown lag: count conservatively
          end
          depth = depth + lag + info['pending']
        end
      end
    end
  end
  if depth >= limit then
    return {-1, depth}
  end
end
local fields = {'v', '1', 'id', ARGV[2], 'task', ARGV[3], 'ct', ARGV[4],
  'payload', ARGV[5], 'attempt', '1', 'enq_ms', ARGV[6]}
for i = 11, #ARGV do
  fields[#fields + 1] = ARGV[i]
end
local due = tonumber(ARGV[9])
if due > tonumber(ARGV[6]) then
  -- The member carries the whole entry, so promotion touches only declared keys.
  table.insert(fields, 1, ARGV[7])
  redis.call('ZADD', KEYS[4], due, cjson.encode(fields))
  redis.call('HSET', KEYS[2],
    'status', 'scheduled', 'task', ARGV[3], 'priority', ARGV[7], 'attempts', '0',
    'enqueued_ms', ARGV[6], 'due_ms', ARGV[9], 'msg_id', 'delayed')
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
    'kind', 'scheduled', 'job', ARGV[2], 'task', ARGV[3], 'priority', ARGV[7],
    'due_ms', ARGV[9], 'ts', ARGV[6])
  return {1, 'delayed'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  -- Group at id 0, so jobs enqueued before the first worker are still delivered.
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
local msg_id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2],
  'status', 'queued', 'task', ARGV[3], 'priority', ARGV[7], 'attempts', '0',
  'enqueued_ms', ARGV[6], 'msg_id', msg_id)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*',
  'kind', 'enqueued', 'job', ARGV[2], 'task', ARGV[3], 'priority', ARGV[7], 'ts', ARGV[6])
return {1, msg_id}
