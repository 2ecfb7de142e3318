#!lua flags=allow-oom
-- defer: a job that may not start yet (its rate or concurrency limit) goes
-- back to the delayed set, fenced like complete: only while the message is
-- pending to this consumer with the delivery count given. In this one script
-- the entry is re-added to the delayed set (due at the rate slot reserved for
-- it, or at server TIME + a backoff that doubles with each deferral, capped
-- and jittered), the message is acked, a 'limited' event written and indexed
-- in the job hash. The promoted copy is a fresh entry, so a deferral is never
-- a delivery (no TooManyDeliveries), and 'attempt' is unchanged (no retry is
-- spent). Unlike bounce there is no limit: a limited job waits as long as its
-- limit says. The entry's 'deferrals' field counts them (for the backoff).
-- A job deferred for a full semaphore is also parked (its delayed member in
-- the parking zset, scored by when), so a slot release wakes it early
-- (slot_release.lua); the backoff is the fallback when no release comes (a
-- holder that crashed frees its slot by expiry, which wakes nobody).
--
-- The job hash (if not final) says where the job now is: msg_id 'delayed',
-- due_ms, and status 'scheduled' (or 'retrying', which it keeps), so the
-- janitor's lost-job check finds it there and the promote makes it 'queued'.
--
-- KEYS[1] stream   KEYS[2] delayed zset   KEYS[3] events stream   KEYS[4] job hash
-- KEYS[5] parking zset (optional)
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] msg id   ARGV[4] delivery count
-- ARGV[5] priority   ARGV[6] reason ('rate' or 'concurrency')   ARGV[7] due ms
-- (0: use the backoff)   ARGV[8] base delay ms   ARGV[9] max delay ms
-- ARGV[10] jitter in [0, 1]   ARGV[11] detail (the limit's key, for the event)
-- reply: {1, due ms, deferrals, ms until due by the server's clock} deferred; {0} not
-- ours any more, or the entry is
-- gone (nothing written)
local MAX_VALUES = 2000
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not (entry and entry[2] == ARGV[2] and tonumber(entry[4]) == tonumber(ARGV[4])) then
  return {0}
end
for i, key in ipairs(KEYS) do
  local want = ({[2] = 'zset', [3] = 'stream', [5] = 'zset'})[i]
  if want then
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= want then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a '
        .. want .. ' (see streamq doctor)')
    end
  end
end
local is_hash = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local status = is_hash and redis.call('HGET', KEYS[4], 'status') or false
local original = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])[1]
if not original or #original[2] > MAX_VALUES then return {0} end
local fields = original[2]
local deferrals, at, job, task, attempt = 0, nil, '', '', ''
for f = 1, #fields - 1, 2 do
  local name = fields[f]
  if name == 'deferrals' then deferrals = tonumber(fields[f + 1]) or 0; at = f + 1
  elseif name == 'id' then job = fields[f + 1]
  elseif name == 'task' then task = fields[f + 1]
  elseif name == 'attempt' then attempt = fields[f + 1] end
end
deferrals = deferrals + 1
if at then fields[at] = tostring(deferrals) else
  fields[#fields + 1] = 'deferrals'
  fields[#fields + 1] = tostring(deferrals)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = tonumber(ARGV[7])
if due <= 0 then
  local exponent = math.min(deferrals - 1, 30)
  local delay = math.min(tonumber(ARGV[9]), tonumber(ARGV[8]) * 2 ^ exponent)
  due = now + math.floor(delay * (0.5 + 0.5 * tonumber(ARGV[10])))
end
if due < now then due = now end
table.insert(fields, 1, ARGV[5])
local member = cjson.encode(fields)
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], due, member)
if KEYS[5] then
  redis.call('ZADD', KEYS[5], now, member)
  -- Long enough for its longest-waiting member (never shortened by a later one).
  local ttl = due - now + 60000
  if redis.call('PTTL', KEYS[5]) < ttl then redis.call('PEXPIRE', KEYS[5], ttl) end
end
local event_id = redis.call('XADD', KEYS[3], '*', 'kind', 'limited', 'job', job,
  'task', task, 'attempt', attempt, 'msg', ARGV[3], 'worker', ARGV[2], 'reason', ARGV[6],
  'limit', ARGV[11], 'deferrals', deferrals, 'due_ms', due, 'ts', now)
local indexed = string.format('ev:%s', event_id)
if status == 'queued' or status == 'scheduled' or status == 'running' then
  redis.call('HSET', KEYS[4], 'status', 'scheduled', 'msg_id', 'delayed',
    'due_ms', string.format('%d', due), indexed, 'limited')
elseif status == 'retrying' then
  redis.call('HSET', KEYS[4], 'msg_id', 'delayed', 'due_ms', string.format('%d', due),
    indexed, 'limited')
elseif is_hash then
  redis.call('HSET', KEYS[4], indexed, 'limited')
end
return {1, due, deferrals, due - now}
