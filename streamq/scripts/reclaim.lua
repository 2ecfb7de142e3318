#!lua flags=allow-oom
-- reclaim: take over messages idle past their task's visibility timeout.
-- Two modes, like promote, because a script may only touch the keys it is
-- given, and the job hashes that index the 'reclaimed' events are named inside
-- the entries:
--   'scan'   finds candidates: XPENDING IDLE anywhere in the PEL in one call
--            (XAUTOCLAIM examines only COUNT x 10 entries per call), each one
--            idle past its own task's timeout (read from its entry); returns
--            up to count of them, and claims nothing. A pending entry whose
--            message was deleted or trimmed has nothing left to run: it goes
--            to the DLQ with that reason here, with a 'dead' event naming the
--            DLQ entry ('dlq'), instead of lingering forever.
--   'claim'  claims the candidates the caller passes back, each with XCLAIM
--            and its task's own timeout as min-idle-time, so a heartbeat or
--            another worker's claim since the scan still wins (the candidate is
--            skipped). The claim adds a delivery, which is read back with
--            XPENDING (delivery counts come from Redis, invariant 5). Each
--            claim writes a 'reclaimed' event, indexed in the job's hash when
--            that exists ('ev:<event id>' = 'reclaimed'; no hash is created).
--
-- The scan is bounded per call and continues where the last call stopped: a
-- head of candidates that belong to tasks with longer timeouts (not claimable
-- yet) cannot hide a stale message behind it for more than a few calls. Each
-- call examines at most ARGV[9] candidates, from just after the cursor to the
-- end of the PEL, then (budget left) from its start again, and returns the
-- cursor for the next call. A message is reached within ceil(candidates /
-- budget) + 1 calls.
--
-- KEYS[1] stream   KEYS[2] dlq stream   KEYS[3] events stream
-- KEYS[4..] (claim) the job hash of each candidate that has a job id, in order
-- ARGV[1] 'scan' or 'claim'   ARGV[2] group   ARGV[3] consumer   ARGV[4] count
-- ARGV[5] min idle ms (smallest timeout)   ARGV[6] now ms   ARGV[7] default visibility ms
-- ARGV[8] cursor (scan): the last id examined by the previous call, or '-' for the start
-- ARGV[9] at most this many candidates examined (scan)
-- ARGV[10] t, the number of task timeouts   ARGV[11..10+2t] pairs: task name, visibility ms
-- ARGV[11+2t..] (claim) per candidate: message id, job id ('' for none)
-- reply: scan {next cursor, {{id, job id}, ...}};
--   claim {{id, {field, value, ...}, delivery count, previous owner}, ...}
local vis = {}
local t = tonumber(ARGV[10])
for i = 11, 10 + 2 * t, 2 do
  vis[ARGV[i]] = tonumber(ARGV[i + 1])
end
local default_vis = tonumber(ARGV[7])

-- The task and job id of an entry's fields (the first of each).
local function task_and_job(fields)
  local task, job = '', ''
  for f = 1, #fields - 1, 2 do
    if fields[f] == 'task' and task == '' then task = fields[f + 1] end
    if fields[f] == 'id' and job == '' then job = fields[f + 1] end
  end
  return task, job
end

-- The DLQ and events keys' types before any write.
for i, key in ipairs(KEYS) do
  if i == 2 or i == 3 then
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= 'stream' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a stream')
    end
  end
end

if ARGV[1] == 'claim' then
  local out = {}
  local k = 4
  for a = 11 + 2 * t, #ARGV - 1, 2 do
    local id, given = ARGV[a], ARGV[a + 1]
    local hash = nil
    if given ~= '' then
      hash = KEYS[k]
      k = k + 1
    end
    local before = redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1)[1]
    local entry = before and redis.call('XRANGE', KEYS[1], id, id)[1]
    -- Gone since the scan (acked, or deleted: the next scan dead-letters it): skipped.
    if entry then
      local fields = entry[2]
      local task, job = task_and_job(fields)
      local timeout = vis[task] or default_vis
      local claimed = redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[3], timeout, id)
      if claimed[1] then
        local now = redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1)[1]
        out[#out + 1] = {id, fields, now[4], before[2]}
        local event_id = redis.call('XADD', KEYS[3], '*', 'kind', 'reclaimed',
          'job', job, 'task', task, 'msg', id, 'from', before[2], 'worker', ARGV[3],
          'deliveries', now[4], 'idle_ms', before[3], 'ts', ARGV[6])
        if hash and job == given and redis.call('TYPE', hash)['ok'] == 'hash' then
          redis.call('HSET', hash, string.format('ev:%s', event_id), 'reclaimed')
        end
      end
    end
  end
  return out
end

local want = tonumber(ARGV[4])
local budget = tonumber(ARGV[9])
local out = {}

local function examine(p)
  local id, idle = p[1], tonumber(p[3])
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if not entry then
    local dlq_id = redis.call('XADD', KEYS[2], '*',
      'dlq_reason', 'message deleted or trimmed while pending',
      'dlq_origin', KEYS[1], 'dlq_origin_id', id, 'dlq_deliveries', p[4], 'dlq_ms', ARGV[6])
    redis.call('XACK', KEYS[1], ARGV[2], id)
    redis.call('XADD', KEYS[3], '*', 'kind', 'dead', 'job', '',
      'msg', id, 'error', 'message deleted or trimmed while pending', 'dlq', dlq_id,
      'ts', ARGV[6])
    return
  end
  local task, job = task_and_job(entry[2])
  if idle >= (vis[task] or default_vis) then
    out[#out + 1] = {id, job}
  end
end

local cursor = ARGV[8]
local from_start = cursor == '-' or cursor == '' or cursor == '0-0'
local start = '-'
if not from_start then start = '(' .. cursor end
local examined = 0
local wrapped = from_start
while #out < want and examined < budget do
  local page_size = math.min(budget - examined, 100)
  local page = redis.call('XPENDING', KEYS[1], ARGV[2], 'IDLE', ARGV[5], start, '+', page_size)
  for _, p in ipairs(page) do
    examine(p)
    examined = examined + 1
    cursor = p[1]
    if #out >= want then break end
  end
  if #out < want and #page < page_size then
    -- The end of the PEL: start over from its head (once per call).
    cursor = '-'
    if wrapped then break end
    wrapped = true
    start = '-'
  else
    start = '(' .. cursor
  end
end
return {cursor, out}
