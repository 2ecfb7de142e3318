#!lua flags=allow-oom
-- rate: a rate limit as GCRA (the generic cell rate algorithm, a token bucket
-- kept as one number): may this job start now, and if not, when?
-- The limit key holds the theoretical arrival time (TAT, µs on the server's
-- clock). A job is allowed once TAT - burst × interval <= now; each job,
-- allowed or not, pushes TAT one interval further. So a job that must wait
-- gets a RESERVED slot (its due time) instead of a refusal: it waits in the
-- delayed set until then and is not denied again, so rate-limited jobs never
-- spin, and over any span t from a quiet start at most burst + t / interval
-- are admitted.
-- The reservation is remembered in the job hash ('rate_slot' = '<attempt>:<ms>',
-- only in a hash that exists and is not final: no key without a TTL is made),
-- so the job returning at its slot, a job deferred afterwards for concurrency,
-- and redis-py repeating this call all reuse it instead of taking another
-- slot. A retry is a new attempt and takes a new slot.
-- No event: a reservation changes no job's state; the job's 'limited' event
-- (defer.lua) tells when it had to wait, and its 'started' event when it ran.
--
-- KEYS[1] limit key (string)   KEYS[2] job hash
-- ARGV[1] interval µs (period / count)   ARGV[2] burst   ARGV[3] attempt
-- reply: {1, slot ms} start now; {0, slot ms} wait until slot ms (server clock)
local limit_key = KEYS[1]
local found = redis.call('TYPE', limit_key)['ok']
if found ~= 'none' and found ~= 'string' then
  return redis.error_reply('WRONGTYPE ' .. limit_key .. ' holds a ' .. found .. ', not a string')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local ok, status = pcall(redis.call, 'HGET', KEYS[2], 'status')
if not ok then status = false end
local live = status == 'queued' or status == 'scheduled' or status == 'retrying'
  or status == 'running'
if live then
  local held = redis.call('HGET', KEYS[2], 'rate_slot')
  if held then
    local attempt, slot = string.match(held, '^(%d+):(%d+)$')
    if attempt == ARGV[3] then
      slot = tonumber(slot)
      if slot <= now_ms then return {1, slot} end
      return {0, slot}
    end
  end
end
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - burst * interval
local slot_ms = now_ms
if allowed_at > now then slot_ms = math.ceil(allowed_at / 1000) end
-- Past TAT the key means nothing (a fresh bucket is full): it expires then.
redis.call('SET', KEYS[1], string.format('%.0f', next_tat),
  'PX', math.ceil((next_tat - now) / 1000) + 1000)
if live then
  redis.call('HSET', KEYS[2], 'rate_slot', string.format('%s:%d', ARGV[3], slot_ms))
end
if slot_ms <= now_ms then return {1, slot_ms} end
return {0, slot_ms}
