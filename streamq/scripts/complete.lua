#!lua flags=allow-oom
-- complete: record a batch of outcomes (succeeded, retry or failed), each fenced.
-- For each job: only if its message is still pending to this consumer with the
-- delivery count the worker was given (DESIGN.md invariant 3; the batch's
-- fence is read first, include/fence.lua), record the outcome and XACK it (one
-- XACK per stream at the end), in this one script:
--   succeeded  result in the job hash, TTL set, event
--   retry      the entry, attempt + 1, goes to the delayed set due at the server's
--              TIME + delay
--              (straight back to its stream when the delay is 0); error recorded,
--              the failed attempt's progress cleared
--   failed     error in the job hash, TTL set, and the entry with the last error
--              and traceback appended to the DLQ (so it can be requeued after a fix)
-- Each outcome's event is indexed in the job hash ('ev:<event id>' = kind) by
-- the same HSET that records the outcome; a retry sent straight back to its
-- stream names the new message ('msg'), a failure its DLQ entry ('dlq'). A
-- 'lost-ownership' event is indexed only in a hash that exists (no key is made
-- for it, and its TTL stays as it is).
-- A repeated run (client retry) finds the message acked and the job hash already
-- holding the outcome of this message, consumer and delivery, and changes
-- nothing (invariant 9); a stale worker's late call is answered 'lost'.
--
-- KEYS[1] events stream   KEYS[2] delayed zset   KEYS[3] dlq stream
-- then per job: stream, job hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] now ms
-- ARGV[4] result ttl ms of a job whose own is 0
-- ARGV[5..] per job, 14 values: msg id, delivery count, job id, task, attempt,
--   status, result or error type, error message, traceback, duration ms,
--   retry delay ms, priority, result ttl ms (0: ARGV[4]), start mark ms (0: none)
--
-- A job whose "started" mark was not written yet (the worker writes marks
-- lazily, with its next outcomes) carries it here instead of in a start call:
-- what start.lua would have written is written by this script, under the same
-- fence and the same status check (a hash that is missing or not waiting or
-- running gets no mark): the started event first, then the outcome's event,
-- and the mark's fields (started_ms, worker, attempts, msg_id, the started
-- event's index) go into the outcome's HSET. One fence check and one hash
-- write instead of two of each.
-- reply: per job 1 = recorded, 3 = recorded and final, with chained children
--   waiting on it (chain.lua flags the hash: the caller settles them), 2 =
--   already recorded by an earlier run, 0 = lost (the message belongs to
--   another consumer or delivery now)
--
-- Nothing below may raise after the first write (a script is not rolled back):
-- the original entry is read and sized before any write, and the XACKs name
-- only ids the fence found pending. unpack() fails past
-- about 8,000 values, so an entry with more than MAX_VALUES values (never one
-- enqueue wrote: those have fewer than 20) is not copied whole: a retry or a
-- failure of such an entry goes to the DLQ with its standard envelope fields
-- only, and a reason saying so.
--#include fence
local STRIDE = 14
local MAX_VALUES = 2000
local STANDARD = {v = true, id = true, task = true, ct = true, payload = true, attempt = true,
  enq_ms = true, max_retries = true, timeout = true}
local replies = {}
local now = ARGV[3]
local n = (#KEYS - 3) / 2

local function event(kind, a, extra)
  local fields = {'kind', kind, 'job', ARGV[a + 2], 'task', ARGV[a + 3],
    'attempt', ARGV[a + 4], 'deliveries', ARGV[a + 1], 'worker', ARGV[2],
    'duration_ms', ARGV[a + 9], 'ts', now}
  for _, v in ipairs(extra) do fields[#fields + 1] = v end
  return redis.call('XADD', KEYS[1], '*', unpack(fields))
end

-- The job hash's field for an event: its index entry.
local function ev(event_id)
  return string.format('ev:%s', event_id)
end

-- The outcome's HSET (in a pcall: a job key that is not a hash is left
-- unwritten), led by the lazy start mark's fields when the job carries one
-- (``started_ev``: the started event's index field). Pairs apply in order, so
-- the outcome's own fields win (a retry's msg_id is its next message).
local function record(job, a, started_ev, ...)
  if started_ev then
    return pcall(redis.call, 'HSET', job, 'started_ms', ARGV[a + 13], 'worker', ARGV[2],
      'attempts', ARGV[a + 4], 'msg_id', ARGV[a], started_ev, 'started', ...)
  end
  return pcall(redis.call, 'HSET', job, ...)
end

-- The server's clock in ms: due times never come from a client's clock.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The first value of each standard envelope field: bounded whatever the entry holds.
local function standard_fields(src)
  local out, seen = {}, {}
  for f = 1, #src - 1, 2 do
    local name = src[f]
    if STANDARD[name] and not seen[name] then
      seen[name] = true
      out[#out + 1] = name
      out[#out + 1] = src[f + 1]
    end
  end
  return out
end

-- Key types are checked before the first write too: the shared keys once here;
-- per job, a stream that is not one (or lost its group) reads as not ours, and a
-- job key that is not a hash is left unwritten (its HSET in a pcall) rather than
-- failing the batch after its earlier jobs were acked.
for i, key in ipairs(KEYS) do
  if i > 3 then break end
  local want = 'stream'
  if i == 2 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

-- The fence of the whole batch, read first (one XPENDING per stream). A message
-- recorded by this run is acked at the end, so one that appears twice in the
-- batch is fenced once: the second reads as recorded.
local streams, ids = {}, {}
for i = 1, n do
  streams[i] = KEYS[2 + 2 * i]
  ids[i] = ARGV[5 + (i - 1) * STRIDE]
end
local deliveries_of = fence_read(ARGV[1], ARGV[2], streams, ids)
local acks, ack_order, done = {}, {}, {}

for i = 1, n do
  local stream, job = streams[i], KEYS[3 + 2 * i]
  local a = 5 + (i - 1) * STRIDE
  local msg_id, deliveries = ARGV[a], tonumber(ARGV[a + 1])
  local ttl = ARGV[a + 12]
  if not tonumber(ttl) or tonumber(ttl) <= 0 then ttl = ARGV[4] end
  -- Which delivery recorded the outcome: a reclaim keeps the message id, so the
  -- id alone cannot tell this worker's retried call from a stale worker's.
  local token = msg_id .. '|' .. ARGV[2] .. '|' .. ARGV[a + 1]
  local seen = stream .. ' ' .. msg_id
  if not done[seen] and deliveries_of(stream, msg_id) == deliveries then
    done[seen] = true
    -- Read and size everything first: no write may precede a possible error.
    local status = ARGV[a + 5]
    local fields, note = nil, nil
    if status ~= 'succeeded' then
      local original = redis.call('XRANGE', stream, msg_id, msg_id)[1]
      if original then
        fields = original[2]
        if #fields > MAX_VALUES then
          note = 'the entry has ' .. (#fields / 2) .. ' fields, too many fields to copy: '
            .. 'only the standard envelope fields were kept'
          fields = standard_fields(fields)
          if status == 'retry' then
            status = 'failed'
            note = note .. '; not retried'
          end
        end
      elseif status == 'retry' then
        status = 'failed'  -- the entry was trimmed: nothing left to retry from
      end
    end
    -- The job hash as it stands: the lazy "started" mark is checked as start.lua
    -- checks it, and an error or due time left by an earlier attempt or schedule
    -- is cleared only when the hash holds one (a read: before any write).
    local read, held = pcall(redis.call, 'HMGET', job, 'status', 'error_type', 'due_ms',
      'has_children')
    if not read then held = {} end
    local found, mark = held[1], ARGV[a + 13]
    local marked = mark ~= '0' and (found == 'queued' or found == 'running'
      or found == 'retrying' or found == 'scheduled')
    local stale = held[2] or held[3]
    local parent = held[4]
    if not acks[stream] then
      acks[stream] = {}
      ack_order[#ack_order + 1] = stream
    end
    table.insert(acks[stream], msg_id)
    local started_ev = nil
    if marked then
      started_ev = ev(redis.call('XADD', KEYS[1], '*',
        'kind', 'started', 'job', ARGV[a + 2], 'task', ARGV[a + 3], 'attempt', ARGV[a + 4],
        'priority', ARGV[a + 11], 'deliveries', ARGV[a + 1], 'worker', ARGV[2], 'ts', mark))
    end
    if status == 'succeeded' then
      local event_id = redis.call('XADD', KEYS[1], '*', 'kind', 'succeeded',
        'job', ARGV[a + 2], 'task', ARGV[a + 3], 'attempt', ARGV[a + 4],
        'deliveries', ARGV[a + 1], 'worker', ARGV[2], 'duration_ms', ARGV[a + 9], 'ts', now)
      if record(job, a, started_ev, 'status', status, 'result', ARGV[a + 6],
          'finished_ms', now, 'duration_ms', ARGV[a + 9], 'outcome_msg', token,
          ev(event_id), 'succeeded') then
        if stale then redis.call('HDEL', job, 'error_type', 'error', 'traceback', 'due_ms') end
        redis.call('PEXPIRE', job, ttl)
      end
    elseif status == 'retry' then
      for f = 1, #fields - 1, 2 do
        if fields[f] == 'attempt' then fields[f + 1] = tostring(tonumber(ARGV[a + 4]) + 1) end
      end
      local delay = tonumber(ARGV[a + 10])
      local next_id = 'delayed'
      local due = server_now() + delay  -- the server's clock, not the worker's
      local extra = {'error_type', ARGV[a + 6], 'delay_ms', ARGV[a + 10]}
      if delay > 0 then
        table.insert(fields, 1, ARGV[a + 11])
        redis.call('ZADD', KEYS[2], due, cjson.encode(fields))
      else
        next_id = redis.call('XADD', stream, '*', unpack(fields))
        extra[#extra + 1] = 'msg'
        extra[#extra + 1] = next_id
      end
      local event_id = event('retried', a, extra)
      if record(job, a, started_ev, 'status', 'retrying', 'error_type', ARGV[a + 6],
          'error', ARGV[a + 7], 'traceback', ARGV[a + 8], 'msg_id', next_id,
          'due_ms', string.format('%d', due), 'outcome_msg', token,
          ev(event_id), 'retried') then
        -- The next attempt starts from nothing: not the failed attempt's progress.
        redis.call('HDEL', job, 'progress', 'progress_msg', 'progress_ms')
      end
    else
      if not fields then fields = {} end
      local reason = 'failed: ' .. ARGV[a + 6]
      if note then
        reason = reason .. ' (' .. note .. ')'
        fields[#fields + 1] = 'dlq_note'
        fields[#fields + 1] = note
      end
      for _, v in ipairs({'dlq_reason', reason,
          'dlq_error_type', ARGV[a + 6], 'dlq_error', ARGV[a + 7],
          'dlq_traceback', ARGV[a + 8], 'dlq_attempts', ARGV[a + 4],
          'dlq_origin', stream, 'dlq_origin_id', msg_id,
          'dlq_deliveries', ARGV[a + 1], 'dlq_ms', now}) do
        fields[#fields + 1] = v
      end
      local dlq_id = redis.call('XADD', KEYS[3], '*', unpack(fields))
      local event_id = event('failed', a,
        {'error_type', ARGV[a + 6], 'dlq_id', dlq_id, 'dlq', dlq_id})
      if record(job, a, started_ev, 'status', 'failed', 'error_type', ARGV[a + 6],
          'error', ARGV[a + 7], 'traceback', ARGV[a + 8], 'finished_ms', now,
          'duration_ms', ARGV[a + 9], 'outcome_msg', token, 'dlq_id', dlq_id,
          ev(event_id), 'failed') then
        redis.call('PEXPIRE', job, ttl)
      end
    end
    replies[i] = 1
    if parent and status ~= 'retry' then replies[i] = 3 end  -- final: settle its children
  elseif select(2, pcall(redis.call, 'HGET', job, 'outcome_msg')) == token then
    replies[i] = 2
  else
    -- Fenced off: record that this worker's outcome was dropped, for the audit.
    local event_id = event('lost-ownership', a,
      {'outcome', ARGV[a + 5], 'error_type', ARGV[a + 6]})
    if redis.call('TYPE', job)['ok'] == 'hash' then
      redis.call('HSET', job, ev(event_id), 'lost-ownership')
    end
    replies[i] = 0
  end
end
for _, stream in ipairs(ack_order) do
  redis.call('XACK', stream, ARGV[1], unpack(acks[stream]))
end
return replies
