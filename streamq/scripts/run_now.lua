#!lua flags=allow-oom
-- run_now: move given delayed jobs (scheduled, or a retry waiting out its
-- backoff) into their priority stream now, instead of at their due time (the
-- dashboard's "run now"). Per job, in one atomic step, as promote.lua does for
-- a due member: the job hash says where the job waits (msg_id 'delayed',
-- due_ms); the member at score due_ms whose job id is this job's is ZREM'd
-- and XADDed to the stream of its priority (cjson [priority, field, value,
-- ...]; an unknown priority goes to the last, lowest stream; a missing stream
-- is created with the group at 0). The hash gets the new msg_id ('scheduled'
-- becomes 'queued'; 'retrying' and 'queued' stay); a 'promoted' event names
-- the new message ('msg'), who asked ('by') and the due time it skipped
-- ('due_ms'), indexed in the hash ('ev:<event id>' = 'promoted').
-- A job that is not waiting in the delayed set (no hash, final, running, in a
-- stream already, or its member not found at due_ms) is left alone and
-- reported; so is a member that cannot become a stream entry (not JSON, a bad
-- shape, too many values): the janitor's promote dead-letters it when due.
-- Everything about a job is checked before its first write, and a bad job is
-- skipped, never an error half way through the call.
-- Idempotent (invariant 9): a repeated run finds msg_id is a stream id now and
-- reports 'not-delayed', writing nothing.
-- A job under a rate or concurrency limit may be deferred again by its limit
-- when a worker fetches it early (defer.lua): run now does not bypass limits.
--
-- KEYS[1] delayed zset   KEYS[2] events stream   KEYS[3..2+p] priority streams
-- KEYS[3+p..] job hashes
-- ARGV[1] group   ARGV[2] p (number of priorities)   ARGV[3] who asked ('by')
-- ARGV[4..3+p] priority names, in the order of the streams
-- ARGV[4+p..] the job id of each job hash, in the order of KEYS[3+p..]
-- reply: per job 'moved', 'missing' (no job hash), 'final/<status>',
--   'not-delayed' (running, in a stream, or its member not found) or 'corrupt'
local MAX_VALUES = 2000
local MAX_SCAN = 10000  -- members sharing one due time examined per job, at most
local p = tonumber(ARGV[2])
local by = ARGV[3]
local clock = redis.call('TIME')
local now = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local WAITING = {scheduled = true, retrying = true, queued = true}

--#include member_id

local function delayed_member(job, due)
  if not due or not tonumber(due) then return nil end
  local offset = 0
  while offset < MAX_SCAN do
    local page = redis.call('ZRANGEBYSCORE', KEYS[1], due, due, 'LIMIT', offset, 100)
    for _, member in ipairs(page) do
      if member_id(member) == job then return member end
    end
    if #page < 100 then return nil end
    offset = offset + 100
  end
  return nil
end

-- The member as [priority, field, value, ...] of strings whose 'id' is job,
-- with its task; nil when it cannot become a stream entry.
local function decoded(member, job)
  local ok, entry = pcall(cjson.decode, member)
  if not ok or type(entry) ~= 'table' or #entry < 3 or #entry % 2 == 0
      or #entry - 1 > MAX_VALUES then
    return nil
  end
  local id, task = nil, ''
  for i = 1, #entry do
    if type(entry[i]) ~= 'string' then return nil end
  end
  for f = 2, #entry - 1, 2 do
    if entry[f] == 'id' and id == nil then id = entry[f + 1] end
    if entry[f] == 'task' and task == '' then task = entry[f + 1] end
  end
  if id ~= job then return nil end
  return entry, task
end

-- The shared keys' types before any write; a job key that is not a hash reads
-- as missing (its HMGET in a pcall).
for i, key in ipairs(KEYS) do
  if i > 2 + p then break end
  local want = 'stream'
  if i == 1 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

local stream_of = {}
for i = 1, p do
  stream_of[ARGV[3 + i]] = KEYS[2 + i]
end
local lowest = KEYS[2 + p]

local replies = {}
for k = 3 + p, #KEYS do
  local hash, job = KEYS[k], ARGV[k + 1]
  local ok, h = pcall(redis.call, 'HMGET', hash, 'status', 'msg_id', 'due_ms')
  local status = ok and h[1]
  local reply
  if not status then
    reply = 'missing'
  elseif FINAL[status] then
    reply = 'final/' .. status
  elseif not WAITING[status] or h[2] ~= 'delayed' then
    reply = 'not-delayed'
  else
    local member = delayed_member(job, h[3])
    local entry, task = nil, ''
    if member then entry, task = decoded(member, job) end
    if not member then
      reply = 'not-delayed'
    elseif not entry then
      reply = 'corrupt'
    else
      redis.call('ZREM', KEYS[1], member)
      local priority = table.remove(entry, 1)
      local stream = stream_of[priority] or lowest
      if redis.call('EXISTS', stream) == 0 then
        redis.call('XGROUP', 'CREATE', stream, ARGV[1], '0', 'MKSTREAM')
      end
      local msg_id = redis.call('XADD', stream, '*', unpack(entry))
      local event_id = redis.call('XADD', KEYS[2], '*', 'kind', 'promoted', 'job', job,
        'task', task, 'msg', msg_id, 'by', by, 'due_ms', h[3], 'ts', now)
      local indexed = string.format('ev:%s', event_id)
      if status == 'scheduled' then
        redis.call('HSET', hash, 'status', 'queued', 'msg_id', msg_id, indexed, 'promoted')
      else
        redis.call('HSET', hash, 'msg_id', msg_id, indexed, 'promoted')
      end
      reply = 'moved'
    end
  end
  replies[#replies + 1] = reply
end
return replies
