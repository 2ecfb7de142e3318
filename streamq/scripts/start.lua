#!lua flags=allow-oom
-- start: mark a fetched batch of jobs as running and record a started event each.
-- Fenced like complete (DESIGN.md invariant 3): only while the message is still
-- pending to this consumer with the delivery count the worker was given. The
-- worker writes marks lazily (with its next outcomes), so a worker paused or cut
-- off after fetching may send its mark after another worker reclaimed the job;
-- that late mark must not claim the job back in its hash. A job hash that is
-- missing or already final is left alone too, so a late or repeated call never
-- resurrects a finished job or creates a key without a TTL. The hash's msg_id
-- becomes the message run (lost.lua locates a job's message by it), and the
-- hash indexes the started event ('ev:<event id>' = 'started').
--
-- KEYS[1] events stream   then per job: stream, job hash
-- ARGV[1] now ms   ARGV[2] worker   ARGV[3] group
-- ARGV[4..] per job: message id, job id, task, attempt, priority, delivery count
-- reply: number of jobs marked
-- No error after the first write: the events key's type is checked first, and a
-- stream without the group or a job key that is not a hash reads as not markable.
local events_key = KEYS[1]
local found = redis.call('TYPE', events_key)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. events_key .. ' holds a ' .. found .. ', not a stream')
end
local marked = 0
local n = (#KEYS - 1) / 2
for i = 1, n do
  local stream, job = KEYS[2 * i], KEYS[2 * i + 1]
  local a = 4 + (i - 1) * 6
  local read, pending = pcall(redis.call, 'XPENDING', stream, ARGV[3], ARGV[a], ARGV[a], 1)
  local entry = read and pending[1]
  if entry and entry[2] == ARGV[2] and tonumber(entry[4]) == tonumber(ARGV[a + 5]) then
    local ok, status = pcall(redis.call, 'HGET', job, 'status')
    if not ok then status = nil end
    if status == 'queued' or status == 'running' or status == 'retrying'
        or status == 'scheduled' then
      local event_id = redis.call('XADD', KEYS[1], '*',
        'kind', 'started', 'job', ARGV[a + 1], 'task', ARGV[a + 2], 'attempt', ARGV[a + 3],
        'priority', ARGV[a + 4], 'deliveries', ARGV[a + 5], 'worker', ARGV[2], 'ts', ARGV[1])
      redis.call('HSET', job, 'status', 'running', 'started_ms', ARGV[1],
        'worker', ARGV[2], 'attempts', ARGV[a + 3], 'msg_id', ARGV[a],
        string.format('ev:%s', event_id), 'started')
      marked = marked + 1
    end
  end
end
return marked
