#!lua flags=allow-oom
-- heartbeat: reset the idle time of messages this consumer is still running,
-- so a long job is not reclaimed while alive (DESIGN.md invariant 6).
-- XCLAIM takes a message from whoever holds it, so each entry is first checked
-- (XPENDING) to be pending to this consumer; a blind XCLAIM would steal back a
-- job another worker reclaimed. JUSTID does not add a delivery.
--
-- KEYS[1..n] streams
-- ARGV[1] group   ARGV[2] consumer   ARGV[3..] pairs: stream index (1-based), msg id
-- reply: per pair 1 = still ours (idle reset), 0 = no longer ours
local out = {}
for i = 3, #ARGV, 2 do
  local stream, id = KEYS[tonumber(ARGV[i])], ARGV[i + 1]
  local entry = redis.call('XPENDING', stream, ARGV[1], id, id, 1)[1]
  if entry and entry[2] == ARGV[2] then
    redis.call('XCLAIM', stream, ARGV[1], ARGV[2], 0, id, 'JUSTID')
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
