#!lua flags=allow-oom
-- drain: re-read this consumer's own pending messages (a restart under the same
-- consumer name), with the delivery count each now has. XREADGROUP with an id
-- reads the consumer's PEL and adds a delivery; an entry whose message was
-- deleted comes back with no fields (the caller moves it to the DLQ).
--
-- KEYS[1..n] streams
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count   ARGV[4..] start id per stream
-- reply: {{stream index, id, {field, value, ...} or {}, delivery count}, ...}
local out = {}
for i, key in ipairs(KEYS) do
  local ok, reply = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2],
    'COUNT', tonumber(ARGV[3]), 'STREAMS', key, ARGV[3 + i])
  if ok and reply and reply[1] then
    for _, e in ipairs(reply[1][2]) do
      local p = redis.call('XPENDING', key, ARGV[1], e[1], e[1], 1)[1]
      local fields = e[2]
      if not fields then fields = {} end
      out[#out + 1] = {i, e[1], fields, p and p[4] or 0}
    end
  end
end
return out
