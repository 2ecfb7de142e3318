#!lua flags=allow-oom
-- cancel: cancel jobs that have not started; ask the worker of a running one to stop it.
-- Per job, the job hash says where its message is (msg_id, due_ms), and this
-- script checks that place, in one atomic step:
--   msg_id 'delayed'   the delayed-set member at score due_ms with this job id
--                      (scheduled, a retry waiting for its backoff, a bounce):
--                      ZREM it; the job is cancelled.
--   a stream id, unread  the entry (with this job id, in whichever priority
--                      stream holds it) is not in the group's PEL and is after
--                      its last-delivered-id: nothing has read it, and once it
--                      is XDEL'd here nothing can. The job is cancelled.
--   delivered          the entry is in the PEL (a worker runs it, or is about
--                      to, or will reclaim it): a script cannot stop a handler.
--                      'cancel' mode records a request (the cancels zset:
--                      member job id, score the server's now; the running
--                      worker polls it) and a 'cancel-requested' event;
--                      'waiting' mode (``queue empty``) leaves it alone.
--   gone               the message is nowhere (deleted or trimmed by hand, or
--                      moved since the caller read it): 'cancel' mode cancels
--                      the job (nothing can run it); 'waiting' mode skips it.
-- A cancelled job's hash gets status 'cancelled', finished_ms, cancelled_by and
-- a TTL: the job's own result ttl, as a finished job's would be (its entry's
-- 'result_ttl' field, seconds, at most ARGV[8]; else its task's, from ARGV[7];
-- else ARGV[2]); its 'cancelled' event names the message ('msg') and
-- keeps what was removed, so the audit keeps the payload: 'entry' (the stream
-- entry's fields, JSON [field, value, ...]) or 'member' (the delayed member as
-- stored, JSON [priority, field, value, ...]). Both events are indexed in the
-- hash ('ev:<event id>' = kind). A final job is left as it is.
-- Idempotent (invariant 9): a repeated run finds the job final ('final') or its
-- request already recorded ('requested', no second event).
--
-- KEYS[1] events stream   KEYS[2] delayed zset   KEYS[3] cancels zset
-- KEYS[4..3+p] priority streams   KEYS[4+p..] job hashes
-- ARGV[1] group   ARGV[2] result ttl ms   ARGV[3] cancels zset ttl ms
-- ARGV[4] p (number of priority streams)   ARGV[5] 'cancel' or 'waiting'
-- ARGV[6] who asked (recorded as 'by': api, cli, empty)
-- ARGV[7] the result ttl ms of the tasks that set one, JSON {task: ms}
-- ARGV[8] the longest result ttl ms an entry may ask for
-- ARGV[9..] the job id of each job hash, in the order of KEYS[4+p..]
-- reply: per job 'cancelled', 'requested', 'skipped' (waiting mode: running or
--   gone), 'final/<status>' (nothing changed) or 'missing' (no job hash)
local p = tonumber(ARGV[4])
local mode, by = ARGV[5], ARGV[6]
local clock = redis.call('TIME')
local now = string.format('%d', tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000))
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local ok_map, task_ttl = pcall(cjson.decode, ARGV[7])
if not ok_map or type(task_ttl) ~= 'table' then task_ttl = {} end

-- The job's result ttl in ms: its entry's own (``fields`` from ``first``: the
-- entry's field, value list), else its task's, else the App's.
local function result_ttl(task, fields, first)
  if fields then
    for f = first, #fields - 1, 2 do
      if fields[f] == 'result_ttl' then
        local seconds = tonumber(fields[f + 1])
        if seconds and seconds > 0 and seconds < math.huge then
          return math.max(1, math.min(math.floor(seconds * 1000), tonumber(ARGV[8])))
        end
      end
    end
  end
  local own = tonumber(task_ttl[task])
  if own and own > 0 then return math.floor(own) end
  return tonumber(ARGV[2])
end

--#include stream_id

--#include member_id

local function delayed_member(job, due)
  if not due then return nil end
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], due, due, 'LIMIT', 0, 100)) do
    if member_id(member) == job then return member end
  end
  return nil
end

local function pending(stream, msg_id)
  local ok, found = pcall(redis.call, 'XPENDING', stream, ARGV[1], msg_id, msg_id, 1)
  return ok and found[1] ~= nil
end

-- Each stream's group's last-delivered-id, read once per call ('' when no group).
local delivered_up_to = {}
local function unread(stream, msg_id)
  if delivered_up_to[stream] == nil then
    delivered_up_to[stream] = ''
    local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
    if ok then
      for _, g in ipairs(groups) do
        local info = {}
        for f = 1, #g - 1, 2 do info[g[f]] = g[f + 1] end
        if info['name'] == ARGV[1] then delivered_up_to[stream] = info['last-delivered-id'] end
      end
    end
  end
  local last = delivered_up_to[stream]
  return last == '' or id_before(last, msg_id)  -- no group: nothing has read it
end

-- Where a job's stream message is: 'pending', 'unread' (with the stream and the
-- entry's fields), 'read' (delivered and acked: an anomaly) or 'gone'.
local function locate(job, msg_id)
  if not string.match(msg_id, '^%d+%-%d+$') then return 'gone' end
  for s = 4, 3 + p do
    local stream = KEYS[s]
    local entry = redis.call('XRANGE', stream, msg_id, msg_id)[1]
    if entry then
      local owner, fields = '', entry[2]
      for f = 1, #fields - 1, 2 do
        if fields[f] == 'id' then
          owner = fields[f + 1]
          break
        end
      end
      if owner == job then
        if pending(stream, msg_id) then return 'pending' end
        if unread(stream, msg_id) then return 'unread', stream, fields end
        return 'read'
      end
    end
  end
  -- An entry deleted while pending stays in the PEL: its worker still holds it.
  for s = 4, 3 + p do
    if pending(KEYS[s], msg_id) then return 'pending' end
  end
  return 'gone'
end

-- No error after the first write: the shared keys' types first; a job key that
-- is not a hash reads as missing.
for i, key in ipairs(KEYS) do
  if i > 3 + p then break end
  local want = 'stream'
  if i == 2 or i == 3 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

local function cancel(hash, job, task, where, msg_id, extra, ttl)
  local fields = {'kind', 'cancelled', 'job', job, 'task', task, 'by', by, 'where', where,
    'msg', msg_id}
  for _, v in ipairs(extra) do fields[#fields + 1] = v end
  fields[#fields + 1] = 'ts'
  fields[#fields + 1] = now
  local event_id = redis.call('XADD', KEYS[1], '*', unpack(fields))
  redis.call('HSET', hash, 'status', 'cancelled', 'finished_ms', now, 'cancelled_by', by,
    string.format('ev:%s', event_id), 'cancelled')
  redis.call('PEXPIRE', hash, ttl)
  redis.call('ZREM', KEYS[3], job)  -- a request left from an earlier run is moot now
  return 'cancelled'
end

local replies = {}
for k = 4 + p, #KEYS do
  local hash, job = KEYS[k], ARGV[k + 5 - p]
  local ok, h = pcall(redis.call, 'HMGET', hash, 'status', 'msg_id', 'due_ms', 'task')
  local status = ok and h[1]
  local reply
  if not status then
    reply = 'missing'
  elseif FINAL[status] then
    reply = 'final/' .. status
  else
    local msg_id, task = h[2] or '', h[4] or ''
    local where, stream, fields, member = 'gone', nil, nil, nil
    if msg_id == 'delayed' and status ~= 'running' then
      member = delayed_member(job, h[3])
      if member then where = 'delayed' end
    else
      where, stream, fields = locate(job, msg_id)
      if where == 'read' then where = 'gone' end
    end
    if where == 'delayed' then
      local decoded_ok, decoded = pcall(cjson.decode, member)
      if not decoded_ok or type(decoded) ~= 'table' then decoded = nil end
      local ttl = result_ttl(task, decoded, 2)  -- [priority, field, value, ...]
      redis.call('ZREM', KEYS[2], member)
      reply = cancel(hash, job, task, 'delayed', msg_id, {'member', member}, ttl)
    elseif where == 'unread' then
      local entry = cjson.encode(fields)
      redis.call('XDEL', stream, msg_id)
      reply = cancel(hash, job, task, 'stream', msg_id, {'entry', entry},
        result_ttl(task, fields, 1))
    elseif mode ~= 'cancel' then
      reply = 'skipped'
    elseif where == 'pending' or status == 'running' and msg_id == 'delayed' then
      -- Running (msg_id 'delayed' while running: marked by a worker older than
      -- start.lua's msg_id, so its message cannot be located; ask all the same).
      if redis.call('ZSCORE', KEYS[3], job) then
        reply = 'requested'
      else
        redis.call('ZADD', KEYS[3], now, job)
        redis.call('PEXPIRE', KEYS[3], ARGV[3])
        local event_id = redis.call('XADD', KEYS[1], '*', 'kind', 'cancel-requested',
          'job', job, 'task', task, 'by', by, 'msg', msg_id, 'ts', now)
        redis.call('HSET', hash, 'cancel_requested_ms', now,
          string.format('ev:%s', event_id), 'cancel-requested')
        reply = 'requested'
      end
    else
      reply = cancel(hash, job, task, 'gone', msg_id, {}, result_ttl(task, nil, 1))
    end
  end
  replies[#replies + 1] = reply
end
return replies
