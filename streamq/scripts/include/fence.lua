-- fence (included by scripts/__init__.py where a script says ``--#include
-- fence``): which messages of a batch are still pending to this consumer, and
-- with which delivery count (DESIGN.md invariant 3), read with one XPENDING per
-- stream instead of one per message: the consumer's own pending entries from
-- the batch's lowest id to its highest. Other running jobs of the consumer that
-- fall in that range come back too, so the read asks for more rows than the
-- batch has; when it is cut short or fails (an id that is not one), each
-- message it did not return is asked for alone. A stream that is not one, or
-- has lost the group, reads as holding nothing of ours.
--
-- fence_read(group, consumer, streams, ids) -> deliveries(stream, id): the
-- delivery count of a message pending to the consumer, or nil.

--#include stream_id

local function fence_read(group, consumer, streams, ids)
  local spans, order = {}, {}
  for i, id in ipairs(ids) do
    local stream = streams[i]
    local span = spans[stream]
    if not span then
      spans[stream] = {n = 1, lo = id, hi = id}
      order[#order + 1] = stream
    else
      span.n = span.n + 1
      if id_before(id, span.lo) then span.lo = id end
      if id_before(span.hi, id) then span.hi = id end
    end
  end
  local found = {}
  for _, stream in ipairs(order) do
    local span = spans[stream]
    local count = 2 * span.n + 64
    local ok, rows = pcall(redis.call, 'XPENDING', stream, group, span.lo, span.hi, count, consumer)
    local counts = {}
    if ok then
      for _, row in ipairs(rows) do counts[row[1]] = tonumber(row[4]) end
    end
    found[stream] = {counts = counts, cut = not ok or #rows >= count}
  end
  return function(stream, id)
    local read = found[stream]
    local deliveries = read.counts[id]
    if deliveries or not read.cut then return deliveries end
    local ok, rows = pcall(redis.call, 'XPENDING', stream, group, id, id, 1)
    local row = ok and rows[1]
    if row and row[2] == consumer then return tonumber(row[4]) end
    return nil
  end
end
