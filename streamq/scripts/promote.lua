#!lua flags=allow-oom
-- promote: move due entries of the delayed set into their priority streams.
-- ZREM and XADD happen in one script, so two janitors racing cannot promote an
-- entry twice, and a janitor dying mid-way cannot lose one.
--
-- Two modes, because a script may only touch the keys it is given and the job
-- hashes to update are named inside the members:
--   'peek'  returns the job ids of up to limit due members, in due order
--           ('' for a member with none): the caller then passes their hashes;
--   'next'  returns the ms until the earliest member is due (0: due now, -1: the
--           set is empty), so a janitor can sleep until then;
--   'move'  promotes the due members, in due order, updating each one's job
--           hash if not final (msg_id, where lost.lua looks for the job's message;
--           and 'scheduled' becomes 'queued'), and stops at the
--           first member whose job hash it was not given (it became due since
--           the peek): the caller peeks again.
-- A member is cjson [priority, field, value, ...]; an unknown priority (the
-- App's list changed) goes to the last (lowest) stream rather than being lost.
-- A member that cannot become a stream entry (not JSON, a bad shape, or more
-- values than unpack() can pass to XADD) is checked before anything is
-- written and goes to the DLQ with the reason and a 'dead' event; its job
-- hash, if any, becomes final ('dead') with a TTL. Nothing just vanishes.
-- Each event is indexed in the job's hash when that exists ('ev:<event id>' =
-- kind): 'promoted' names its new message ('msg'), 'dead' its DLQ entry ('dlq').
--
-- KEYS[1] delayed zset   KEYS[2] events stream   KEYS[3] dlq stream
-- KEYS[4..3+p] priority streams   KEYS[4+p..] job hashes (move)
-- ARGV[1] 'peek' or 'move'   ARGV[2] limit   ARGV[3] group   ARGV[4] result ttl ms
-- ARGV[5] p (number of priorities)
-- ARGV[6..5+p] priority names, in the order of the streams
-- ARGV[6+p..] (move) the job id of each job hash, in the order of KEYS[4+p..]
-- "Now" is the server's clock (TIME), never a janitor's: a janitor whose clock
-- runs fast must not promote early.
-- reply: peek {job id, ...}; next ms or -1; move {promoted, dead-lettered, 1 if it
-- stopped early else 0}
local MAX_VALUES = 2000
local STANDARD = {v = true, id = true, task = true, ct = true, payload = true, attempt = true,
  enq_ms = true, max_retries = true, timeout = true}
local clock = redis.call('TIME')
local now = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
local limit = tonumber(ARGV[2])
local p = tonumber(ARGV[5])

--#include member_id

-- Key types before any write (the delayed set, events, DLQ and streams); a job
-- key that is not a hash reads as no hash (its HGET in a pcall), so it is
-- never written and cannot fail the batch half way.
for i, key in ipairs(KEYS) do
  if i > 3 + p then break end
  local want = 'stream'
  if i == 1 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

if ARGV[1] == 'next' then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if #first == 0 then return -1 end
  return math.max(0, math.ceil(tonumber(first[2]) - tonumber(now)))
end

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
if ARGV[1] == 'peek' then
  local ids = {}
  for i, member in ipairs(due) do ids[i] = member_id(member) end
  return ids
end

local stream_of, hash_of = {}, {}
for i = 1, p do
  stream_of[ARGV[5 + i]] = KEYS[3 + i]
end
local lowest = KEYS[3 + p]
for i = 4 + p, #KEYS do
  hash_of[ARGV[i + 2]] = KEYS[i]
end

local promoted, dead, stopped = 0, 0, 0
for _, member in ipairs(due) do
  local job = member_id(member)
  local hash = nil
  if job ~= '' then
    hash = hash_of[job]
    if not hash then
      stopped = 1
      break
    end
  end
  -- Check everything before the first write.
  local problem, note = nil, nil
  local ok, entry = pcall(cjson.decode, member)
  if not ok or type(entry) ~= 'table' then
    problem = 'corrupt delayed entry: not JSON'
  elseif #entry < 3 or #entry % 2 == 0 then
    problem = 'corrupt delayed entry: not [priority, field, value, ...]'
  else
    for i = 1, #entry do
      if type(entry[i]) ~= 'string' then
        problem = 'corrupt delayed entry: a value is not a string'
        break
      end
    end
  end
  local fields = {}
  if problem then
    entry = nil
  elseif #entry - 1 > MAX_VALUES then
    problem = 'delayed entry has ' .. ((#entry - 1) / 2) .. ' fields, too many fields to '
      .. 'promote'
    note = 'only the standard envelope fields were kept'
    local seen = {}
    for f = 2, #entry - 1, 2 do
      if STANDARD[entry[f]] and not seen[entry[f]] then
        seen[entry[f]] = true
        fields[#fields + 1] = entry[f]
        fields[#fields + 1] = entry[f + 1]
      end
    end
  end
  local task = ''
  if entry then
    for f = 2, #entry - 1, 2 do
      if entry[f] == 'task' then
        task = entry[f + 1]
        break
      end
    end
  end
  -- Only a member whose decoded id is the one read from its start updates that hash.
  if entry then
    local decoded = ''
    for f = 2, #entry - 1, 2 do
      if entry[f] == 'id' then
        decoded = entry[f + 1]
        break
      end
    end
    if decoded ~= job then hash = nil end
  end
  local status = nil
  if hash then
    local ok, value = pcall(redis.call, 'HGET', hash, 'status')  -- not a hash: no status
    if ok then status = value end
  end
  if status ~= 'scheduled' and status ~= 'retrying' and status ~= 'queued'
      and status ~= 'running' then
    status = nil  -- leave final ones (and a missing hash) alone
  end

  redis.call('ZREM', KEYS[1], member)
  if not problem then
    local priority = table.remove(entry, 1)
    local stream = stream_of[priority] or lowest
    if redis.call('EXISTS', stream) == 0 then
      redis.call('XGROUP', 'CREATE', stream, ARGV[3], '0', 'MKSTREAM')
    end
    local msg_id = redis.call('XADD', stream, '*', unpack(entry))
    local event_id = redis.call('XADD', KEYS[2], '*',
      'kind', 'promoted', 'job', job, 'task', task, 'msg', msg_id, 'ts', now)
    local indexed = string.format('ev:%s', event_id)
    if status == 'scheduled' then
      redis.call('HSET', hash, 'status', 'queued', 'msg_id', msg_id, indexed, 'promoted')
    elseif status then
      redis.call('HSET', hash, 'msg_id', msg_id, indexed, 'promoted')
    elseif hash and redis.call('TYPE', hash)['ok'] == 'hash' then
      redis.call('HSET', hash, indexed, 'promoted')
    end
    promoted = promoted + 1
  else
    fields[#fields + 1] = 'dlq_reason'; fields[#fields + 1] = problem
    if note then fields[#fields + 1] = 'dlq_note'; fields[#fields + 1] = note end
    fields[#fields + 1] = 'dlq_origin'; fields[#fields + 1] = KEYS[1]
    fields[#fields + 1] = 'dlq_raw'; fields[#fields + 1] = member
    fields[#fields + 1] = 'dlq_ms'; fields[#fields + 1] = now
    local dlq_id = redis.call('XADD', KEYS[3], '*', unpack(fields))
    local event_id = redis.call('XADD', KEYS[2], '*',
      'kind', 'dead', 'job', job, 'task', task, 'error', problem,
      'error_type', 'PoisonMessage', 'dlq_id', dlq_id, 'dlq', dlq_id, 'ts', now)
    local indexed = string.format('ev:%s', event_id)
    -- Only a hash that says the job waits in the delayed set becomes dead.
    if status == 'scheduled' or status == 'retrying'
        or (status and redis.call('HGET', hash, 'msg_id') == 'delayed') then
      redis.call('HSET', hash, 'status', 'dead', 'error_type', 'PoisonMessage',
        'error', problem, 'finished_ms', now, 'dlq_id', dlq_id, indexed, 'dead')
      redis.call('PEXPIRE', hash, ARGV[4])
    elseif hash and redis.call('TYPE', hash)['ok'] == 'hash' then
      redis.call('HSET', hash, indexed, 'dead')
    end
    dead = dead + 1
  end
end
return {promoted, dead, stopped}
