#!lua flags=allow-oom
-- bounce: hand a message whose task this worker does not know back to the
-- queue, for a worker that knows it (workers with different task sets share
-- a queue, or a rolling deploy is half done). Fenced like complete: only while
-- the message is pending to this consumer with the delivery count given. The
-- entry goes to the delayed set (due at the server's TIME + a backoff that
-- doubles with each bounce) with a 'bounces' field one higher, and is acked,
-- in this one script; the promoted copy is a fresh entry, so bounces never
-- count as deliveries (TooManyDeliveries is for messages that kill workers).
-- Past the limit the caller dead-letters it (reply -1) with the reason.
--
-- The job hash (if not final) records where the message now is (msg_id
-- 'delayed', due_ms), so the janitor's lost-job check finds it there; any
-- job hash that exists indexes the 'bounced' event ('ev:<event id>').
--
-- KEYS[1] stream   KEYS[2] delayed zset   KEYS[3] events stream   KEYS[4] job hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] msg id   ARGV[4] delivery count
-- ARGV[5] priority   ARGV[6] max bounces   ARGV[7] base delay ms   ARGV[8] max delay ms
-- reply: {1, bounces, delay ms} bounced; {-1, bounces} past the limit (nothing
-- written); {0} not ours any more, or the entry is gone (nothing written)
local MAX_VALUES = 2000  -- cjson-encoded, not unpacked; still, bound what we copy
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not (entry and entry[2] == ARGV[2] and tonumber(entry[4]) == tonumber(ARGV[4])) then
  return {0}
end
local is_hash = redis.call('TYPE', KEYS[4])['ok'] == 'hash'
local status = is_hash and redis.call('HGET', KEYS[4], 'status') or false
-- Nothing may raise after the XACK below: check the shared keys' types first.
local delayed_type = redis.call('TYPE', KEYS[2])['ok']
local events_type = redis.call('TYPE', KEYS[3])['ok']
if (delayed_type ~= 'none' and delayed_type ~= 'zset')
    or (events_type ~= 'none' and events_type ~= 'stream') then
  return redis.error_reply('WRONGTYPE the delayed set or the events stream of this queue '
    .. 'holds another type (see streamq doctor)')
end
local original = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])[1]
if not original or #original[2] > MAX_VALUES then return {0} end
local fields = original[2]
local bounces, at, job, task = 0, nil, '', ''
for f = 1, #fields - 1, 2 do
  local name = fields[f]
  if name == 'bounces' then bounces = tonumber(fields[f + 1]) or 0; at = f + 1
  elseif name == 'id' then job = fields[f + 1]
  elseif name == 'task' then task = fields[f + 1] end
end
bounces = bounces + 1
if bounces > tonumber(ARGV[6]) then return {-1, bounces} end
if at then fields[at] = tostring(bounces) else
  fields[#fields + 1] = 'bounces'
  fields[#fields + 1] = tostring(bounces)
end
local delay = math.min(tonumber(ARGV[8]), tonumber(ARGV[7]) * 2 ^ (bounces - 1))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
table.insert(fields, 1, ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + delay, cjson.encode(fields))
local event_id = redis.call('XADD', KEYS[3], '*', 'kind', 'bounced', 'job', job,
  'task', task, 'msg', ARGV[3], 'worker', ARGV[2], 'bounces', bounces, 'delay_ms', delay,
  'error', 'unknown task: no handler registered on this worker', 'ts', now)
local indexed = string.format('ev:%s', event_id)
if status == 'queued' or status == 'scheduled' or status == 'retrying' then
  redis.call('HSET', KEYS[4], 'msg_id', 'delayed', 'due_ms', tostring(now + delay),
    indexed, 'bounced')
elseif is_hash then
  redis.call('HSET', KEYS[4], indexed, 'bounced')
end
return {1, bounces, delay}
