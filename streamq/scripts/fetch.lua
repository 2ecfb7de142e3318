#!lua flags=allow-oom
-- fetch: read new messages for one consumer, strictly highest priority first.
-- One XREADGROUP per stream inside one script, so a lower stream is read only
-- when the higher ones had fewer than COUNT waiting, with no round trip between.
-- (XREADGROUP without BLOCK is allowed in scripts.)
--
-- KEYS[1..n] priority streams, highest first
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count
-- reply: {{stream, {{id, {field, value, ...}}, ...}}, ...} for streams that had messages
local want = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if want <= 0 then break end
  local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2],
    'COUNT', want, 'STREAMS', key, '>')
  if not ok then
    -- NOGROUP: the stream or its group is gone (deleted by hand); recreate at 0.
    redis.call('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
  elseif reply then
    local entries = reply[1][2]
    want = want - #entries
    out[#out + 1] = {key, entries}
  end
end
return out
