-- enqueue: add a batch of jobs of one task to their priority stream (or, when
-- due later, to the delayed set), writing each one's job hash and an event.
-- One call carries many jobs so a bulk enqueue pays the script and round-trip
-- cost once per batch, not per job.
-- Idempotent by job id: a second run (redis-py retrying after a lost reply)
-- finds each job hash and adds nothing for it (DESIGN.md invariant 9).
--
-- KEYS[1] priority stream   KEYS[2] events stream   KEYS[3] delayed zset
-- KEYS[4..n+3] the jobs' hashes
-- KEYS[n+4..] every priority stream of the queue (only when ARGV[7] > 0)
-- then, with a unique key (ARGV[11] not ''), two more: the unique key, and the
--   job hash of the job the caller expects it to name (ARGV[13]; else any key)
-- ARGV[1] group   ARGV[2] task   ARGV[3] content type   ARGV[4] now ms
-- ARGV[5] priority   ARGV[6] due ms, epoch (0: not given)
-- ARGV[7] max pending jobs in the queue (0: no limit)
-- ARGV[8] number of jobs n   ARGV[9] number of extra entry values e
-- ARGV[10] delay ms (0: none): due at the server's TIME + delay
-- ARGV[11] unique mode: '' none, 'key', 'throttle' or 'debounce' (then n = 1)
-- ARGV[12] unique window ms: 'key' holds the key this long after its job is
--   final; 'throttle' holds it this long from the first enqueue; 'debounce'
--   is the job's delay, restarted by every enqueue that replaces it
-- ARGV[13] the job id the caller read from the unique key ('' none)
-- ARGV[14..13+e] extra entry fields as field, value pairs (per-call options)
-- ARGV[14+e..] per job: job id, payload[, sig[, sig of the debounce replacement]]
--   (a signed entry, streamq/signing.py: its 'sig' field; with a unique key the
--   fourth value signs the entry under the replaced job's id, ARGV[13])
-- Unique keys: 'unique:<key>' names the one live job of that key. The script
-- needs that job's hash in KEYS, so a caller that does not know it yet gets
-- {-3, job id} and calls again with it (the key may change in between: the
-- check is repeated here each time). A 'key' or 'debounce' key has no TTL
-- while its job lives; the janitor's sweep (unique.lua) expires it once the
-- job is final. Held keys answer {2, holder id}; a debounce that replaced the
-- waiting job's arguments and due time answers {3, holder id}.
-- Due times follow the server's clock (TIME), not the producer's: a relative
-- delay is added here, and an absolute due time is 'later' when it is after
-- the server's now. ARGV[4] (the producer's now) is only a timestamp.
-- reply: per job {1, stream id or 'delayed'} added, {0, existing id} the job
--   existed, {-1, depth} refused: the queue already held max pending jobs;
--   {2, id}, {3, id} or {-3, id} for a unique key (above)
-- The job hash indexes its event (field 'ev:<event id>' = kind, as every script
-- that writes an event for a job does); the enqueued event names its message.
local n, e = tonumber(ARGV[8]), tonumber(ARGV[9])
-- Checked before any write: the entry's fields go through unpack(), which fails
-- past about 8,000 values (per-call options add a handful).
if e > 100 or e % 2 ~= 0 then
  return redis.error_reply('enqueue: ' .. e .. ' extra entry values; at most 100, in pairs')
end
local mode, window = ARGV[11], tonumber(ARGV[12])
local last_stream = #KEYS  -- the last priority stream key, when they are given
local unique_key, holder_key = nil, nil
if mode ~= '' then
  if n ~= 1 then
    return redis.error_reply('enqueue: a unique key takes one job per call, not ' .. n)
  end
  unique_key, holder_key = KEYS[#KEYS - 1], KEYS[#KEYS]
  last_stream = #KEYS - 2
end
local FIRST_EXTRA = 14
local stride = (#ARGV - FIRST_EXTRA + 1 - e) / n
if stride ~= 2 and stride ~= 3 and stride ~= 4 then
  return redis.error_reply('enqueue: each job takes 2 to 4 values, not ' .. stride)
end
-- Key types before any write too (a WRONGTYPE half way would leave part of the
-- batch enqueued, and a caller retrying it with fresh ids would enqueue twice):
-- the stream, events and delayed keys, then each job key, read once here.
for i, key in ipairs(KEYS) do
  if i > 3 then break end
  local want = 'stream'
  if i == 3 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end
-- A batch of fresh ids (the usual case) is answered by one EXISTS over all its
-- job keys; only a batch holding a known key reads (and type-checks) each one.
local existing_ids = {}
if redis.call('EXISTS', unpack(KEYS, 4, 3 + n)) > 0 then
  for j = 1, n do
    local job = KEYS[3 + j]
    local ok, existing = pcall(redis.call, 'HGET', job, 'msg_id')
    if not ok then
      return redis.error_reply('WRONGTYPE ' .. job .. ' is not a hash')
    end
    existing_ids[j] = existing
  end
end
local held = nil
if unique_key then
  local ok, value = pcall(redis.call, 'GET', unique_key)
  if not ok then
    return redis.error_reply('WRONGTYPE ' .. unique_key .. ' is not a string')
  end
  held = value
  if held and not existing_ids[1] and held ~= ARGV[13] then
    return {{-3, held}}  -- the caller passes this job's hash and calls again
  end
end
local due, delay = tonumber(ARGV[6]), tonumber(ARGV[10])
local clock = redis.call('TIME')
local server_now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if delay > 0 then due = server_now + delay end
local due_text = string.format('%d', due)
local limit = tonumber(ARGV[7])
local depth = 0
if limit > 0 then
  -- Depth = unread + delivered-but-unacked in every priority stream, plus delayed.
  depth = redis.call('ZCARD', KEYS[3])
  for i = n + 4, last_stream do
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
end
-- A held unique key answers with its job, unless that job is over (final, past
-- the key's window, or gone): then this enqueue takes the key over.
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local replace_member = nil
if held and not existing_ids[1] then
  if mode == 'throttle' then
    return {{2, held}}  -- the key lives exactly its window (PX)
  end
  local ok, h = pcall(redis.call, 'HMGET', holder_key, 'status', 'finished_ms', 'msg_id', 'due_ms')
  if not ok then h = {} end
  local status = h[1]
  if status and not FINAL[status] and mode == 'key' then
    return {{2, held}}
  elseif status == 'scheduled' and h[3] == 'delayed' and h[4] then
    -- Debounce: the waiting job takes these arguments and waits its window again.
    -- A job of the key already past its wait (queued, running) keeps the old
    -- arguments; this enqueue then adds the job that runs with the new ones.
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], h[4], h[4])) do
      local ok_m, entry = pcall(cjson.decode, member)
      if ok_m and type(entry) == 'table' then
        for f = 2, #entry - 1, 2 do
          if entry[f] == 'id' and entry[f + 1] == held then replace_member = member end
        end
      end
    end
  elseif mode == 'key' and status and window > 0
      and tonumber(h[2] or '0') + window > server_now then
    return {{2, held}}
  end
end
local later = due > server_now
if not later and redis.call('EXISTS', KEYS[1]) == 0 then
  -- Group at id 0, so jobs enqueued before the first worker are still delivered.
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
end
local replies = {}
for j = 1, n do
  local job = KEYS[3 + j]
  local a = FIRST_EXTRA + e + (j - 1) * stride
  local id = ARGV[a]
  local existing = existing_ids[j]
  if existing then
    replies[j] = {0, existing}
  elseif replace_member then
    local fields = {ARGV[5], 'v', '1', 'id', held, 'task', ARGV[2], 'ct', ARGV[3],
      'payload', ARGV[a + 1], 'attempt', '1', 'enq_ms', ARGV[4]}
    for i = FIRST_EXTRA, FIRST_EXTRA - 1 + e do
      fields[#fields + 1] = ARGV[i]
    end
    if stride == 4 then
      fields[#fields + 1] = 'sig'
      fields[#fields + 1] = ARGV[a + 3]
    end
    redis.call('ZREM', KEYS[3], replace_member)
    redis.call('ZADD', KEYS[3], due, cjson.encode(fields))
    local event_id = redis.call('XADD', KEYS[2], '*',
      'kind', 'debounced', 'job', held, 'task', ARGV[2], 'priority', ARGV[5],
      'due_ms', due_text, 'ts', ARGV[4])
    redis.call('HSET', holder_key, 'due_ms', due_text, string.format('ev:%s', event_id),
      'debounced')
    replies[j] = {3, held}
  elseif limit > 0 and depth >= limit then
    replies[j] = {-1, depth}
  else
    local fields = {'v', '1', 'id', id, 'task', ARGV[2], 'ct', ARGV[3],
      'payload', ARGV[a + 1], 'attempt', '1', 'enq_ms', ARGV[4]}
    for i = FIRST_EXTRA, FIRST_EXTRA - 1 + e do
      fields[#fields + 1] = ARGV[i]
    end
    if stride > 2 then
      fields[#fields + 1] = 'sig'
      fields[#fields + 1] = ARGV[a + 2]
    end
    if later then
      -- The member carries the whole entry, so promotion touches only declared keys.
      table.insert(fields, 1, ARGV[5])
      redis.call('ZADD', KEYS[3], due, cjson.encode(fields))
      local event_id = redis.call('XADD', KEYS[2], '*',
        'kind', 'scheduled', 'job', id, 'task', ARGV[2], 'priority', ARGV[5],
        'due_ms', due_text, 'ts', ARGV[4])
      redis.call('HSET', job,
        'status', 'scheduled', 'task', ARGV[2], 'priority', ARGV[5], 'attempts', '0',
        'enqueued_ms', ARGV[4], 'due_ms', due_text, 'msg_id', 'delayed',
        string.format('ev:%s', event_id), 'scheduled')
      replies[j] = {1, 'delayed'}
    else
      local msg_id = redis.call('XADD', KEYS[1], '*', unpack(fields))
      local event_id = redis.call('XADD', KEYS[2], '*',
        'kind', 'enqueued', 'job', id, 'task', ARGV[2], 'priority', ARGV[5], 'msg', msg_id,
        'ts', ARGV[4])
      redis.call('HSET', job,
        'status', 'queued', 'task', ARGV[2], 'priority', ARGV[5], 'attempts', '0',
        'enqueued_ms', ARGV[4], 'msg_id', msg_id, string.format('ev:%s', event_id), 'enqueued')
      replies[j] = {1, msg_id}
    end
    depth = depth + 1
    if unique_key then
      if mode == 'throttle' then
        redis.call('SET', unique_key, id, 'PX', window)
      else
        redis.call('SET', unique_key, id)
        redis.call('HSET', job, 'unique', unique_key, 'unique_ms', ARGV[12])
      end
    end
  end
end
return replies
