#!lua flags=allow-oom
-- lost: bound job hashes whose message is gone (a janitor duty).
-- A job hash that is not final (scheduled, queued, running, retrying) has no
-- TTL: its message carries it to an outcome, which sets one. If that message
-- is lost (XDEL'd, trimmed, acked by hand, a delayed member removed), nothing
-- ever will, and the hash would stay forever. For each hash given, this
-- script decides from the server's state, in one atomic step, whether the
-- job's message still exists where the hash says it is:
--   msg_id 'delayed'  a member of the delayed set at score due_ms with this job id
--   msg_id <stream id> an entry with that id and this job id in a priority
--                      stream, still pending in the group or not yet delivered
-- Every script that moves a job records where it went in the same step
-- (enqueue, complete's retry, requeue, promote), so a live job always passes.
-- (start.lua records the message id too.) The safe age counts from the latest
-- of enqueued_ms, started_ms, progress_ms and due_ms. A job that fails, and
-- whose last change is older than the safe age, is
-- marked final: status 'dead', error type 'MessageLost', a TTL and a 'dead'
-- event, indexed in the hash ('ev:<event id>'). Its stream and DLQ are not touched: if the message was still there
-- after all, the job runs and its outcome overwrites the hash.
--
-- KEYS[1] events stream   KEYS[2] delayed zset   KEYS[3..2+p] priority streams
-- KEYS[3+p..] job hashes
-- ARGV[1] group   ARGV[2] result ttl ms   ARGV[3] safe age ms
-- ARGV[4] p (number of priority streams)   ARGV[5] 'mark', or 'check' (write nothing)
-- ARGV[6..] the job id of each job hash, in the order of KEYS[3+p..]
-- reply: the job ids found lost (and, with 'mark', marked)
local p = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local safe_age = tonumber(ARGV[3])
local NOT_FINAL = {scheduled = true, queued = true, running = true, retrying = true}

--#include stream_id

--#include member_id

local function in_delayed(job, due)
  if not due then return false end
  local members = redis.call('ZRANGEBYSCORE', KEYS[2], due, due, 'LIMIT', 0, 100)
  for _, member in ipairs(members) do
    if member_id(member) == job then return true end
  end
  return false
end

local function in_stream(job, msg_id)
  if not string.match(msg_id, '^%d+%-%d+$') then return false end
  for s = 3, 2 + p do
    local stream = KEYS[s]
    local entry = redis.call('XRANGE', stream, msg_id, msg_id)[1]
    local owner = ''
    if entry then
      local fields = entry[2]
      for f = 1, #fields - 1, 2 do
        if fields[f] == 'id' then
          owner = fields[f + 1]
          break
        end
      end
    end
    if owner == job then
      local ok, pending = pcall(redis.call, 'XPENDING', stream, ARGV[1], msg_id, msg_id, 1)
      if not ok or pending[1] then return true end  -- pending (or no group yet: fetch makes it)
      local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
      if ok then
        for _, g in ipairs(groups) do
          local info = {}
          for f = 1, #g - 1, 2 do info[g[f]] = g[f + 1] end
          if info['name'] == ARGV[1] and id_before(info['last-delivered-id'], msg_id) then
            return true  -- not yet delivered
          end
        end
      end
    end
  end
  return false
end

-- No error after the first write: shared key types first; a job key that is
-- not a hash reads as nothing to do.
for i, key in ipairs(KEYS) do
  if i > 2 + p then break end
  local want = 'stream'
  if i == 2 then want = 'zset' end
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end

local lost = {}
for k = 3 + p, #KEYS do
  local hash, job = KEYS[k], ARGV[k + 3 - p]
  local ok, h = pcall(redis.call, 'HMGET', hash, 'status', 'msg_id', 'due_ms', 'enqueued_ms',
    'started_ms', 'progress_ms', 'task')
  if ok and h[1] and NOT_FINAL[h[1]] then
    local last = 0
    for i = 3, 6 do
      local t = tonumber(h[i])
      if t and t > last then last = t end
    end
    local alive
    if h[2] == 'delayed' and h[1] == 'running' then
      -- Marked running by a worker older than start.lua's msg_id (rolling upgrade):
      -- its message cannot be located, so it is never taken for lost.
      alive = true
    elseif h[2] == 'delayed' then
      alive = in_delayed(job, h[3])
    else
      alive = h[2] and in_stream(job, h[2])
    end
    if not alive and now - last >= safe_age then
      lost[#lost + 1] = job
      if ARGV[5] == 'mark' then
        local reason = 'the job\'s message is gone (deleted, trimmed, or acknowledged '
          .. 'outside streamq) while it was ' .. h[1] .. ': it will not run'
        local event_id = redis.call('XADD', KEYS[1], '*', 'kind', 'dead', 'job', job,
          'task', h[7] or '', 'error', reason, 'error_type', 'MessageLost',
          'msg', h[2] or '', 'ts', string.format('%d', now))
        redis.call('HSET', hash, 'status', 'dead', 'error_type', 'MessageLost',
          'error', reason, 'finished_ms', string.format('%d', now),
          string.format('ev:%s', event_id), 'dead')
        redis.call('PEXPIRE', hash, ARGV[2])
      end
    end
  end
end
return lost
