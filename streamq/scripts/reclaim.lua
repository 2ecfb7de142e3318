#!lua flags=allow-oom
-- reclaim: take over messages idle past their task's visibility timeout.
-- XPENDING IDLE finds candidates anywhere in the PEL in one call (XAUTOCLAIM
-- examines only COUNT x 10 entries per call); each one is then claimed with
-- XCLAIM and its task's own timeout as min-idle-time, so a fresh heartbeat
-- between the two commands still wins. The claim adds a delivery, which is
-- read back with XPENDING (delivery counts come from Redis, invariant 5).
-- A pending entry whose message was deleted or trimmed has nothing left to
-- run: it goes to the DLQ with that reason instead of lingering forever.
--
-- The scan is bounded per call and continues where the last call stopped: a
-- head of candidates that belong to tasks with longer timeouts (not claimable
-- yet) cannot hide a stale message behind it for more than a few calls. Each
-- call examines at most ARGV[8] candidates, from just after the cursor to the
-- end of the PEL, then (budget left) from its start again, and returns the
-- cursor for the next call. A message is reached within ceil(candidates /
-- budget) + 1 calls.
--
-- KEYS[1] stream   KEYS[2] dlq stream   KEYS[3] events stream
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count   ARGV[4] min idle ms (smallest timeout)
-- ARGV[5] now ms   ARGV[6] default visibility ms
-- ARGV[7] cursor: the last id examined by the previous call, or '-' for the start
-- ARGV[8] at most this many candidates examined
-- ARGV[9..] pairs: task name, visibility ms
-- reply: {next cursor, {{id, {field, value, ...}, delivery count, previous owner}, ...}}
local vis = {}
for i = 9, #ARGV, 2 do
  vis[ARGV[i]] = tonumber(ARGV[i + 1])
end
local default_vis = tonumber(ARGV[6])
local want = tonumber(ARGV[3])
local budget = tonumber(ARGV[8])
local out = {}

local function examine(p)
  local id, owner, idle = p[1], p[2], tonumber(p[3])
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  if not entry then
    redis.call('XADD', KEYS[2], '*', 'dlq_reason', 'message deleted or trimmed while pending',
      'dlq_origin', KEYS[1], 'dlq_origin_id', id, 'dlq_deliveries', p[4], 'dlq_ms', ARGV[5])
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XADD', KEYS[3], '*', 'kind', 'dead', 'job', '',
      'msg', id, 'error', 'message deleted or trimmed while pending', 'ts', ARGV[5])
    return
  end
  local fields = entry[2]
  local task, job = '', ''
  for f = 1, #fields - 1, 2 do
    if fields[f] == 'task' and task == '' then task = fields[f + 1] end
    if fields[f] == 'id' and job == '' then job = fields[f + 1] end
  end
  local timeout = vis[task] or default_vis
  if idle >= timeout then
    local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], timeout, id)
    if claimed[1] then
      local now = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)[1]
      out[#out + 1] = {id, fields, now[4], owner}
      redis.call('XADD', KEYS[3], '*', 'kind', 'reclaimed',
        'job', job, 'task', task, 'msg', id, 'from', owner, 'worker', ARGV[2],
        'deliveries', now[4], 'idle_ms', idle, 'ts', ARGV[5])
    end
  end
end

-- The DLQ and events keys' types before any write (the claims come first).
for i, key in ipairs(KEYS) do
  if i > 1 then
    local found = redis.call('TYPE', key)['ok']
    if found ~= 'none' and found ~= 'stream' then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a stream')
    end
  end
end

local cursor = ARGV[7]
local from_start = cursor == '-' or cursor == '' or cursor == '0-0'
local start = '-'
if not from_start then start = '(' .. cursor end
local examined = 0
local wrapped = from_start
while #out < want and examined < budget do
  local page_size = math.min(budget - examined, 100)
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[4], start, '+', page_size)
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
