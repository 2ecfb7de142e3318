#!lua flags=allow-oom
-- trim: drop old history from one stream without ever dropping work.
-- The cut is the smallest of: the age cutoff, the length cutoff, and, for every
-- consumer group on the stream, its oldest pending entry and its last-delivered
-- id. So a pending entry is never trimmed (XAUTOCLAIM and XCLAIM would then drop
-- it from the PEL: silent loss, DESIGN.md invariant 2) and neither is an entry
-- no consumer has read yet. XTRIM MINID ~ only removes whole nodes below the
-- cut, so it may keep a little more, never less.
-- A stream without groups (the events stream) has no such bound; its caller
-- gives a floor instead: entries at or after it are never cut, whatever the
-- cutoffs (the events a result waiter reading now may still need).
--
-- KEYS[1] stream
-- ARGV[1] age cutoff id ('0' for none)   ARGV[2] max length (0 for none)
-- ARGV[3] max entries to examine for the length cutoff
-- ARGV[4] floor: never cut past this id ('' or absent for none)
-- reply: {entries removed, the cut used ('' when nothing could be trimmed)}
--#include stream_id

if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ''} end
local cut = nil
if ARGV[1] ~= '0' then cut = ARGV[1] end
local maxlen = tonumber(ARGV[2])
if maxlen > 0 then
  local excess = redis.call('XLEN', KEYS[1]) - maxlen
  if excess > 0 then
    excess = math.min(excess, tonumber(ARGV[3]))
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', excess + 1)
    local boundary = oldest[#oldest][1]
    if cut == nil or id_before(boundary, cut) == false then cut = boundary end
  end
end
if cut == nil then return {0, ''} end
local floor = ARGV[4]
if floor and floor ~= '' and id_before(floor, cut) then cut = floor end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for f = 1, #g - 1, 2 do info[g[f]] = g[f + 1] end
  local summary = redis.call('XPENDING', KEYS[1], info['name'])
  if tonumber(summary[1]) > 0 and id_before(summary[2], cut) then cut = summary[2] end
  local delivered = info['last-delivered-id']
  if delivered == '0-0' then return {0, ''} end
  -- Entries after last-delivered-id are unread: keep the first of them too.
  if id_before(delivered, cut) then cut = delivered end
end
-- XTRIM ~ removes at most 100 nodes' worth of entries per call (10,000 by
-- default): repeat, so one pass keeps up with streams that grow faster than
-- that per trim interval, up to 100 calls per pass to bound the script's time.
local removed = 0
for _ = 1, 100 do
  local n = redis.call('XTRIM', KEYS[1], 'MINID', '~', cut)
  removed = removed + n
  if n == 0 then break end
end
return {removed, cut}
