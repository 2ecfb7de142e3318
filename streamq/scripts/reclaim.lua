#!lua flags=allow-oom
-- reclaim: take over messages idle past their task's visibility timeout, at a
-- server cost that does not grow with the number of workers.
--
-- Per stream, ONE scanner per janitor interval walks the whole PEL in bounded
-- pages and puts each stale message into the stream's hand-out zset; every
-- worker with free slots pops from the hand-out (cheap when empty) and claims
-- what it popped. Two modes, because a script may only touch the keys it is
-- given, and the job hashes that index the 'reclaimed' events are named
-- inside the entries:
--   'page'   the gate, one page of the scan, then the hand-out. The gate (a
--            hash with a TTL) is either a pass in progress (owner = its
--            scanner, cursor, started; TTL = the lease) or a stamp between
--            passes (owner = '', TTL until the next pass may start). No gate:
--            this caller starts a pass at the head of the PEL. Its own pass:
--            it walks the next page (at most ARGV[9] PEL entries, plain
--            XPENDING so the walk is bounded; at most ARGV[10] entry look-ups;
--            a PEL of at most 10 x ARGV[9] entries is walked with XPENDING
--            IDLE instead, ten times cheaper per entry and bounded by its size)
--            and checks each entry idle past the smallest timeout against its
--            own task's timeout (read from its entry): stale ones go into the
--            hand-out (score: when they became stale). A pending entry whose
--            message was deleted or trimmed has nothing left to run: it goes
--            to the DLQ with that reason here, with a 'dead' event naming the
--            DLQ entry ('dlq'). Another's pass, or the stamp: no scan. Then,
--            unless its pass goes on, it pops up to ARGV[4] messages from the
--            hand-out (the longest stale first) and returns them with their
--            job ids. A scanner that dies holds the gate only for the lease.
--            A pass also notes when the earliest entry it saw can become stale
--            (idle and timeout; the smallest timeout for entries it did not
--            read): the stamp lasts until then (at most the pass's start plus
--            the smallest timeout), since heartbeats and claims only make
--            entries younger and new deliveries are younger still. A PEL of
--            live, heartbeated jobs is then walked about once per two thirds
--            of the smallest timeout, not once per interval.
--   'claim'  claims the messages the caller popped, each with XCLAIM and its
--            task's own timeout as min-idle-time, so a heartbeat or another
--            worker's claim since the scan still wins (the message is
--            skipped), as is a message acked meanwhile. The claim adds a
--            delivery, which is read back with XPENDING (delivery counts come
--            from Redis, invariant 5). Each claim writes a 'reclaimed' event,
--            indexed in the job's hash when that exists ('ev:<event id>' =
--            'reclaimed'; no hash is created).
-- A popped message that is never claimed (its popper died) is still pending
-- and idle: the next pass hands it out again. The hand-out has a TTL (three
-- intervals, renewed on each add), so nothing in it outlives its use.
--
-- KEYS[1] stream   KEYS[2] dlq stream   KEYS[3] events stream
-- KEYS[4] gate (hash)   KEYS[5] hand-out (zset)
-- KEYS[6..] (claim) the job hash of each message that has a job id, in order
-- ARGV[1] 'page' or 'claim'   ARGV[2] group   ARGV[3] consumer
-- ARGV[4] (page) pop up to this many   ARGV[5] min idle ms (smallest timeout)
-- ARGV[6] default visibility ms   ARGV[7] janitor interval ms   ARGV[8] lease ms
-- ARGV[9] page: PEL entries walked at most   ARGV[10] page: entry look-ups at most
-- ARGV[11] t, the number of task timeouts   ARGV[12..11+2t] pairs: task name, visibility ms
-- ARGV[12+2t..] (claim) per message: message id, job id ('' for none)
-- reply: page {state, {{id, job id}, ...}}, state 'more' (this caller's pass
--   goes on: call again), 'done' (it finished a pass) or 'skip' (no scan);
--   claim {{id, {field, value, ...}, delivery count, previous owner}, ...}
local vis = {}
local t = tonumber(ARGV[11])
for i = 12, 11 + 2 * t, 2 do
  vis[ARGV[i]] = tonumber(ARGV[i + 1])
end
local default_vis = tonumber(ARGV[6])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- The task and job id of an entry's fields (the first of each).
local function task_and_job(fields)
  local task, job = '', ''
  for f = 1, #fields - 1, 2 do
    if fields[f] == 'task' and task == '' then task = fields[f + 1] end
    if fields[f] == 'id' and job == '' then job = fields[f + 1] end
  end
  return task, job
end

-- Every key's type before any write.
local wanted = {'stream', 'stream', 'stream', 'hash', 'zset'}
for i = 1, 5 do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= wanted[i] then
    return redis.error_reply(string.format('WRONGTYPE %s holds a %s, not a %s', KEYS[i], found, wanted[i]))
  end
end

if ARGV[1] == 'claim' then
  local out = {}
  local k = 6
  for a = 12 + 2 * t, #ARGV - 1, 2 do
    local id, given = ARGV[a], ARGV[a + 1]
    local hash = nil
    if given ~= '' then
      hash = KEYS[k]
      k = k + 1
    end
    local before = redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1)[1]
    local entry = before and redis.call('XRANGE', KEYS[1], id, id)[1]
    -- Acked since the scan, or deleted (the next pass dead-letters it): skipped.
    if entry then
      local fields = entry[2]
      local task, job = task_and_job(fields)
      local timeout = vis[task] or default_vis
      local claimed = redis.call('XCLAIM', KEYS[1], ARGV[2], ARGV[3], timeout, id)
      if claimed[1] then
        local after = redis.call('XPENDING', KEYS[1], ARGV[2], id, id, 1)[1]
        out[#out + 1] = {id, fields, after[4], before[2]}
        local event_id = redis.call('XADD', KEYS[3], '*', 'kind', 'reclaimed',
          'job', job, 'task', task, 'msg', id, 'from', before[2], 'worker', ARGV[3],
          'deliveries', after[4], 'idle_ms', before[3], 'ts', now)
        if hash and job == given and redis.call('TYPE', hash)['ok'] == 'hash' then
          redis.call('HSET', hash, string.format('ev:%s', event_id), 'reclaimed')
        end
      end
    end
  end
  return out
end

local interval = tonumber(ARGV[7])
local state = 'skip'
local gate = redis.call('HMGET', KEYS[4], 'owner', 'cursor', 'started', 'due')
local mine = gate[1] == ARGV[3]
if not gate[1] or mine then
  local size = tonumber(ARGV[9])
  local min_idle = tonumber(ARGV[5])
  local lookups = tonumber(ARGV[10])
  -- due: the earliest time an entry seen so far can become stale; at most the
  -- pass's start + the smallest timeout (anything delivered since is younger).
  local cursor, started, due = '-', now, now + min_idle
  if mine then cursor, started, due = gate[2], tonumber(gate[3]), tonumber(gate[4]) end
  local start = '-'
  if cursor ~= '-' then start = '(' .. cursor end
  local page
  if redis.call('XPENDING', KEYS[1], ARGV[2])[1] <= size * 10 then
    -- A small PEL: the server filters by idle time itself (about ten times
    -- cheaper per entry than a plain page in Lua), still bounded by the size.
    page = redis.call('XPENDING', KEYS[1], ARGV[2], 'IDLE', min_idle, start, '+', lookups)
    size = lookups
    due = math.min(due, now) -- the fresher entries are not seen: no later pass than usual
  else
    page = redis.call('XPENDING', KEYS[1], ARGV[2], start, '+', size)
  end
  local walked = 0
  local stale = {}
  for _, p in ipairs(page) do
    local id, idle = p[1], tonumber(p[3])
    if idle < min_idle then due = math.min(due, now - idle + min_idle) end
    if idle >= min_idle then
      if lookups <= 0 then break end
      lookups = lookups - 1
      local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
      if not entry then
        local dlq_id = redis.call('XADD', KEYS[2], '*',
          'dlq_reason', 'message deleted or trimmed while pending',
          'dlq_origin', KEYS[1], 'dlq_origin_id', id, 'dlq_deliveries', p[4], 'dlq_ms', now)
        redis.call('XACK', KEYS[1], ARGV[2], id)
        redis.call('XADD', KEYS[3], '*', 'kind', 'dead', 'job', '',
          'msg', id, 'error', 'message deleted or trimmed while pending', 'dlq', dlq_id,
          'ts', now)
      else
        local task = task_and_job(entry[2])
        local timeout = vis[task] or default_vis
        due = math.min(due, now - idle + timeout)
        if idle >= timeout then
          stale[#stale + 1] = now - idle + timeout
          stale[#stale + 1] = id
        end
      end
    end
    walked = walked + 1
    cursor = id
  end
  if #stale > 0 then
    redis.call('ZADD', KEYS[5], unpack(stale))
    redis.call('PEXPIRE', KEYS[5], 3 * interval)
  end
  if walked == #page and #page < size then
    -- The end of the PEL: the stamp lets the next pass start a quarter
    -- interval early, so a scanner calling once per interval never finds it.
    -- Nor before the due time: until then nothing can be stale (heartbeats and
    -- claims only make entries younger, new deliveries are younger still).
    state = 'done'
    local next_at = math.max(started + interval - math.floor(interval / 4), due)
    redis.call('HSET', KEYS[4], 'owner', '', 'cursor', '-', 'started', started, 'due', next_at)
    redis.call('PEXPIRE', KEYS[4], math.max(1, next_at - now))
  else
    state = 'more'
    redis.call('HSET', KEYS[4], 'owner', ARGV[3], 'cursor', cursor, 'started', started, 'due', due)
    redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]))
    return {state, {}}
  end
end

local out = {}
local want = tonumber(ARGV[4])
if want > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[5], want)
  for i = 1, #popped, 2 do
    local id = popped[i]
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    if entry then
      local _, job = task_and_job(entry[2])
      out[#out + 1] = {id, job}
    end
  end
end
return {state, out}
