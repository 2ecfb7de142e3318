-- cron_mark: record how far a schedule's ticks are handled, only ever forward.
-- A janitor records a tick after enqueueing its job (or skipping it). Two
-- janitors overlapping in a lease handover may record out of order: an older
-- record must not move a schedule back, or a handled tick would be due again.
-- Idempotent: running it twice with the same arguments records once.
--
-- KEYS[1] the cron hash
-- ARGV[1] schedule name   ARGV[2] through ms (every tick at or before it is handled)
-- ARGV[3] the new state (JSON: through_ms, run_ms, job)
-- reply: 1 recorded, 0 an equal or later record was already there
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current then
  local ok, state = pcall(cjson.decode, current)
  if ok and type(state) == 'table' then
    local through = tonumber(state['through_ms'])
    if through and through >= tonumber(ARGV[2]) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
