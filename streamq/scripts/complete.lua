-- complete: record a batch of outcomes (succeeded, failed or retry), each fenced.
-- For each job: only if its message is still pending to this consumer with the
-- delivery count the worker was given (DESIGN.md invariant 3), XACK it, write the
-- final status with its result or error, set the job hash TTL, append an event.
-- A repeated run (client retry) finds the message acked and the job hash already
-- holding this message's outcome, and changes nothing (invariant 9).
--
-- KEYS[1] events stream, then per job: stream, job hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] now ms   ARGV[4] result ttl ms
-- ARGV[5] events maxlen
-- ARGV[6..] per job, 10 values: msg id, delivery count, job id, task, attempt,
--   status ('succeeded' | 'failed' | 'retry'), result or error type, error message, traceback,
--   duration ms
-- A 'retry' re-adds the original entry with attempt + 1 to the same stream
-- (the job hash then points at the new entry) and records the error.
-- reply: per job 1 = recorded, 2 = already recorded by an earlier run, 0 = lost
--   (the message belongs to another consumer or delivery now)
local STRIDE = 10
local replies = {}
local n = (#KEYS - 1) / 2
for i = 1, n do
  local stream, job = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 6 + (i - 1) * STRIDE
  local msg_id, deliveries = ARGV[a], tonumber(ARGV[a + 1])
  local pending = redis.call('XPENDING', stream, ARGV[1], msg_id, msg_id, 1)
  local entry = pending[1]
  if entry and entry[2] == ARGV[2] and tonumber(entry[4]) == deliveries then
    redis.call('XACK', stream, ARGV[1], msg_id)
    local status = ARGV[a + 5]
    local kind = status
    if status == 'retry' then
      local original = redis.call('XRANGE', stream, msg_id, msg_id)[1]
      if original then
        local fields = original[2]
        for f = 1, #fields, 2 do
          if fields[f] == 'attempt' then fields[f + 1] = tostring(tonumber(ARGV[a + 4]) + 1) end
        end
        local new_id = redis.call('XADD', stream, '*', unpack(fields))
        redis.call('HSET', job, 'status', 'retrying', 'error_type', ARGV[a + 6],
          'error', ARGV[a + 7], 'traceback', ARGV[a + 8], 'msg_id', new_id,
          'outcome_msg', msg_id)
        kind = 'retried'
      else
        status = 'failed'  -- the entry was trimmed: nothing left to retry from
        kind = status
      end
    end
    if status == 'succeeded' then
      redis.call('HSET', job, 'status', status, 'result', ARGV[a + 6],
        'finished_ms', ARGV[3], 'duration_ms', ARGV[a + 9], 'outcome_msg', msg_id)
      redis.call('HDEL', job, 'error_type', 'error', 'traceback')
    elseif status == 'failed' then
      redis.call('HSET', job, 'status', status, 'error_type', ARGV[a + 6],
        'error', ARGV[a + 7], 'traceback', ARGV[a + 8],
        'finished_ms', ARGV[3], 'duration_ms', ARGV[a + 9], 'outcome_msg', msg_id)
    end
    if status ~= 'retry' then redis.call('PEXPIRE', job, ARGV[4]) end
    local error_type = ''
    if status ~= 'succeeded' then error_type = ARGV[a + 6] end
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*',
      'kind', kind, 'job', ARGV[a + 2], 'task', ARGV[a + 3], 'attempt', ARGV[a + 4],
      'deliveries', ARGV[a + 1], 'worker', ARGV[2], 'duration_ms', ARGV[a + 9],
      'error_type', error_type,
      'ts', ARGV[3])
    replies[i] = 1
  elseif redis.call('HGET', job, 'outcome_msg') == msg_id then
    replies[i] = 2
  else
    replies[i] = 0
  end
end
return replies
