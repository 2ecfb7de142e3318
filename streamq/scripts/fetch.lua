#!lua flags=allow-oom
-- fetch: read new messages for one consumer, strictly highest priority first.
-- One XREADGROUP per stream inside one script, so a lower stream is read only
-- when the higher ones had fewer than COUNT waiting, with no round trip between.
-- (XREADGROUP without BLOCK is allowed in scripts.)
--
-- A stream that does not exist yet gets the group here, at id 0 (MKSTREAM):
-- nothing is retained, and unlike XGROUP CREATE from the client this works at
-- maxmemory (allow-oom), so a worker started during a memory incident runs.
-- A stream that exists without the group lost it (XGROUP DESTROY): it is NOT
-- recreated here, since id 0 would rerun every retained (acked) entry; the
-- reply lists it with no entries, and the caller recreates the group at its
-- restart point and fetches again. Lower streams are still read meanwhile.
--
-- KEYS[1..n] priority streams, highest first
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count
-- reply: {{stream, {{id, {field, value, ...}}, ...}}, ...} for streams that had
-- messages, and {stream, {}} for each stream that exists without the group
local want = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if want <= 0 then break end
  local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2],
    'COUNT', want, 'STREAMS', key, '>')
  if not ok then
    local message = type(reply) == 'table' and reply['err'] or tostring(reply)
    if not string.find(message, 'NOGROUP', 1, true) then
      return redis.error_reply(message)  -- e.g. WRONGTYPE: the caller names the key
    end
    if redis.call('EXISTS', key) == 0 then
      redis.call('XGROUP', 'CREATE', key, ARGV[1], '0', 'MKSTREAM')
    else
      out[#out + 1] = {key, {}}  -- the group is lost: the caller recreates it
    end
  elseif reply then
    local entries = reply[1][2]
    want = want - #entries
    out[#out + 1] = {key, entries}
  end
end
return out
