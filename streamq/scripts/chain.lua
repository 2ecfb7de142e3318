#!lua flags=allow-oom
-- chain: jobs that wait for other jobs (streamq/chains.py).
--
-- 'add' enqueues one child job with parents, idempotent by the child's id:
--   every parent succeeded: the child is queued in its stream at once;
--   a parent ended failed, dead or cancelled: the child goes to the DLQ with a
--     reason naming that parent, its hash final (dead) with a TTL;
--   else the child waits: its entry (cjson [priority, field, value, ...], the
--     delayed set's member shape) in the deferred hash under its id, status
--     'deferred', and it is listed in each live parent's children set, each
--     such parent in the parents zset (score: when it was first listed), and
--     flagged in its hash ('has_children'), so the worker that records the
--     parent's outcome settles its children at once (complete.lua replies 3).
--   A parent with no job hash is refused ({-2, parent id}), nothing written.
-- 'release' (the janitor) settles one waiting child whose parents' outcomes
--   it was given: all succeeded, it is queued; one failed, dead, cancelled or
--   gone (its hash expired unseen), it goes to the DLQ naming that parent;
--   otherwise it keeps waiting. A child that no longer waits (cancelled, or
--   settled by an earlier run) is only unlisted. Final parents whose children
--   set is then empty leave the parents zset.
-- Each event is indexed in the child's hash ('ev:<event id>' = kind).
--
-- KEYS[1] events   KEYS[2] dlq   KEYS[3] deferred hash   KEYS[4] parents zset
-- KEYS[5..4+p] priority streams   KEYS[5+p] child job hash
-- KEYS[6+p..] per parent: its job hash, its children set
-- ARGV[1] 'add' or 'release'   ARGV[2] group   ARGV[3] now ms   ARGV[4] result ttl ms
-- ARGV[5] p   ARGV[6..5+p] priority names, in the order of the streams
-- ARGV[6+p] child job id   ARGV[7+p] number of parents k   ARGV[8+p..7+p+k] parent ids
-- add only, then: task, content type, priority, payload, e, e extra entry values
-- reply: add {1, msg id} queued, {0, existing msg id} the child existed,
--   {4, dlq id} dead-lettered, {5, 'deferred'} waiting, {-2, parent id} unknown parent;
--   release {1, msg id} queued, {4, dlq id} dead-lettered, {5, ''} still waiting,
--   {0, ''} nothing to settle (only unlisted)
local FINAL = {succeeded = true, failed = true, dead = true, cancelled = true}
local mode, group, now, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local p = tonumber(ARGV[5])
local child_hash = KEYS[5 + p]
local child = ARGV[6 + p]
local k = tonumber(ARGV[7 + p])
local stream_of = {}
for i = 1, p do
  stream_of[ARGV[5 + i]] = KEYS[4 + i]
end
local lowest = KEYS[4 + p]

-- Key types before any write: the shared keys; a job key that is not a hash
-- reads as a missing job.
local WANT = {'stream', 'stream', 'hash', 'zset'}
for i, key in ipairs(KEYS) do
  if i > 4 + p then break end
  local found = redis.call('TYPE', key)['ok']
  local want = WANT[i] or 'stream'
  if found ~= 'none' and found ~= want then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. want)
  end
end
-- HGET on KEYS[i]; nil when it is missing or not a hash.
local function hget(i, field)
  local ok, value = pcall(redis.call, 'HGET', KEYS[i], field)
  if ok then return value end
  return nil
end
local child_index = 5 + p

-- The parents' outcome: the first that failed (or is gone), else whether any lives.
local failed, failed_status, live = nil, nil, false
for i = 1, k do
  local status = hget(5 + p + 2 * i - 1, 'status')
  if not status then
    if mode == 'add' then return {-2, ARGV[7 + p + i]} end
    failed, failed_status = ARGV[7 + p + i], 'gone'
    break
  elseif status ~= 'succeeded' and FINAL[status] then
    failed, failed_status = ARGV[7 + p + i], status
    break
  elseif status ~= 'succeeded' then
    live = true
  end
end

local entry
if mode == 'add' then
  local existing = hget(child_index, 'msg_id')
  if existing then return {0, existing} end
  local a = 8 + p + k
  local e = tonumber(ARGV[a + 4])
  entry = {ARGV[a + 2], 'v', '1', 'id', child, 'task', ARGV[a], 'ct', ARGV[a + 1],
    'payload', ARGV[a + 3], 'attempt', '1', 'enq_ms', now}
  for i = a + 5, a + 4 + e do entry[#entry + 1] = ARGV[i] end
  local parents = table.concat(ARGV, ',', 8 + p, 7 + p + k)
  redis.call('HSET', child_hash, 'status', 'deferred', 'task', ARGV[a], 'priority', ARGV[a + 2],
    'attempts', '0', 'enqueued_ms', now, 'after', parents, 'msg_id', 'deferred')
  if live and not failed then
    redis.call('HSET', KEYS[3], child, cjson.encode(entry))
    local event_id = redis.call('XADD', KEYS[1], '*', 'kind', 'deferred', 'job', child,
      'task', ARGV[a], 'priority', ARGV[a + 2], 'after', parents, 'ts', now)
    redis.call('HSET', child_hash, string.format('ev:%s', event_id), 'deferred')
    for i = 1, k do
      if hget(5 + p + 2 * i - 1, 'status') ~= 'succeeded' then
        redis.call('SADD', KEYS[6 + p + 2 * i - 1], child)
        redis.call('ZADD', KEYS[4], 'NX', now, ARGV[7 + p + i])
        -- The parent's worker learns from complete.lua that children wait on it.
        redis.call('HSET', KEYS[5 + p + 2 * i - 1], 'has_children', '1')
      end
    end
    return {5, 'deferred'}
  end
else
  local member = redis.call('HGET', KEYS[3], child)
  local waiting = member and hget(child_index, 'status') == 'deferred'
  if waiting and live and not failed then return {5, ''} end
  if member then
    local ok, decoded = pcall(cjson.decode, member)
    if ok and type(decoded) == 'table' then entry = decoded end
  end
  redis.call('HDEL', KEYS[3], child)
  for i = 1, k do
    local children = KEYS[6 + p + 2 * i - 1]
    redis.call('SREM', children, child)
    local status = hget(5 + p + 2 * i - 1, 'status')
    if (not status or FINAL[status]) and redis.call('SCARD', children) == 0 then
      redis.call('ZREM', KEYS[4], ARGV[7 + p + i])
    end
  end
  if not waiting then return {0, ''} end
  if not entry then
    failed, failed_status = '', 'a corrupt deferred entry'
  end
end

local task = hget(child_index, 'task') or ''
if failed then
  local fields = {}
  if entry then
    for i = 2, #entry do fields[#fields + 1] = entry[i] end
  end
  local reason
  if failed == '' then
    reason = 'chain: ' .. failed_status
  elseif failed_status == 'gone' then
    reason = 'parent ' .. failed .. ' is gone: its outcome expired before the child was released'
  else
    reason = 'parent ' .. failed .. ' ended ' .. failed_status
  end
  -- The stream it would have run from: a requeue after a fix puts it there.
  local origin = lowest
  if entry then origin = stream_of[entry[1]] or lowest end
  for _, v in ipairs({'dlq_reason', reason, 'dlq_error_type', 'ParentFailed',
      'dlq_error', reason, 'dlq_parent', failed, 'dlq_origin', origin, 'dlq_ms', now}) do
    fields[#fields + 1] = v
  end
  local dlq_id = redis.call('XADD', KEYS[2], '*', unpack(fields))
  local event_id = redis.call('XADD', KEYS[1], '*', 'kind', 'dead', 'job', child, 'task', task,
    'error_type', 'ParentFailed', 'error', reason, 'parent', failed, 'dlq_id', dlq_id,
    'dlq', dlq_id, 'ts', now)
  redis.call('HSET', child_hash, 'status', 'dead', 'error_type', 'ParentFailed', 'error', reason,
    'finished_ms', now, 'dlq_id', dlq_id, string.format('ev:%s', event_id), 'dead')
  redis.call('PEXPIRE', child_hash, ttl)
  return {4, dlq_id}
end

local priority = table.remove(entry, 1)
local stream = stream_of[priority] or lowest
if redis.call('EXISTS', stream) == 0 then
  redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
end
local msg_id = redis.call('XADD', stream, '*', unpack(entry))
local kind = 'enqueued'
if mode == 'release' then kind = 'released' end
local event_id = redis.call('XADD', KEYS[1], '*', 'kind', kind, 'job', child, 'task', task,
  'priority', priority, 'msg', msg_id, 'ts', now)
redis.call('HSET', child_hash, 'status', 'queued', 'msg_id', msg_id,
  string.format('ev:%s', event_id), kind)
return {1, msg_id}
