#!lua flags=allow-oom
-- dead: move one message that cannot run (poison) to the DLQ, fenced.
-- The original entry's fields are copied from the stream itself (an entry
-- deleted while pending yields none), followed by the DLQ metadata. The message
-- is acked in the same script, so it is never both in the DLQ and pending.
--
-- KEYS[1] stream   KEYS[2] dlq stream   KEYS[3] events stream   KEYS[4] job hash
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] msg id   ARGV[4] delivery count
-- ARGV[5] reason  ARGV[6] now ms   ARGV[7] result ttl ms
-- ARGV[8] job id ('' when the entry has none)   ARGV[9] task ('' when unknown)
-- ARGV[10] error type for the job hash (PoisonMessage, TooManyDeliveries, ...)
-- reply: DLQ entry id, or 0 when the message is no longer ours
-- The 'dead' event names the message ('msg') and its DLQ entry ('dlq'); a job
-- hash that exists indexes it ('ev:<event id>' = 'dead').
-- Key types before any write: the DLQ and events streams (a job key that is not
-- a hash is left alone).
for i, key in ipairs(KEYS) do
  if i == 2 or i == 3 then
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= 'stream' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a stream')
    end
  end
end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
local entry = pending[1]
if not (entry and entry[2] == ARGV[2] and tonumber(entry[4]) == tonumber(ARGV[4])) then
  return 0
end
-- unpack() below fails past about 8,000 values: an entry with more than MAX_VALUES
-- (never one enqueue wrote) keeps only its standard envelope fields, with a note.
local MAX_VALUES = 2000
local STANDARD = {v = true, id = true, task = true, ct = true, payload = true, attempt = true,
  enq_ms = true, max_retries = true, timeout = true}
local fields = {}
local original = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if original[1] and #original[1][2] <= MAX_VALUES then
  fields = original[1][2]
elseif original[1] then
  local src, seen = original[1][2], {}
  for f = 1, #src - 1, 2 do
    if STANDARD[src[f]] and not seen[src[f]] then
      seen[src[f]] = true
      fields[#fields + 1] = src[f]
      fields[#fields + 1] = src[f + 1]
    end
  end
  fields[#fields + 1] = 'dlq_note'
  fields[#fields + 1] = 'the entry has ' .. (#src / 2) .. ' fields, too many fields to copy: '
    .. 'only the standard envelope fields were kept'
end
fields[#fields + 1] = 'dlq_reason'; fields[#fields + 1] = ARGV[5]
fields[#fields + 1] = 'dlq_origin'; fields[#fields + 1] = KEYS[1]
fields[#fields + 1] = 'dlq_origin_id'; fields[#fields + 1] = ARGV[3]
fields[#fields + 1] = 'dlq_deliveries'; fields[#fields + 1] = ARGV[4]
fields[#fields + 1] = 'dlq_ms'; fields[#fields + 1] = ARGV[6]
local dlq_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
local event_id = redis.call('XADD', KEYS[3], '*',
  'kind', 'dead', 'job', ARGV[8], 'task', ARGV[9], 'deliveries', ARGV[4],
  'worker', ARGV[2], 'error', ARGV[5], 'error_type', ARGV[10], 'msg', ARGV[3],
  'dlq', dlq_id, 'ts', ARGV[6])
if ARGV[8] ~= '' and redis.call('TYPE', KEYS[4])['ok'] == 'hash' then
  redis.call('HSET', KEYS[4], 'status', 'dead', 'error_type', ARGV[10],
    'error', ARGV[5], 'finished_ms', ARGV[6], 'dlq_id', dlq_id, 'outcome_msg', ARGV[3],
    string.format('ev:%s', event_id), 'dead')
  redis.call('PEXPIRE', KEYS[4], ARGV[7])
end
return dlq_id
