#!lua flags=allow-oom
-- prune_consumers: remove consumers that are idle and hold no pending entries.
-- XGROUP DELCONSUMER drops a consumer's pending entries with it, so the check
-- (XPENDING for that consumer) and the delete run atomically here.
--
-- KEYS[1] stream
-- ARGV[1] group   ARGV[2] min idle ms   ARGV[3] consumer to keep (the caller)
-- reply: names of the consumers removed
local removed = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return removed end
for _, c in ipairs(consumers) do
  local info = {}
  for f = 1, #c - 1, 2 do info[c[f]] = c[f + 1] end
  local name = info['name']
  if name ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    local owned = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, name)
    if #owned == 0 then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      removed[#removed + 1] = name
    end
  end
end
return removed
