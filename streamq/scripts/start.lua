#!lua flags=allow-oom
-- start: mark a fetched batch of jobs as running and record a started event each.
-- A job hash that is missing or already final is left alone, so a late or
-- repeated call never resurrects a finished job or creates a key without a TTL.
--
-- KEYS[1] events stream   KEYS[2..n+1] job hashes
-- ARGV[1] now ms   ARGV[2] worker   ARGV[3] events maxlen
-- ARGV[4..] per job: job id, task, attempt, priority, delivery count
-- reply: number of jobs marked
local marked = 0
for i = 2, #KEYS do
  local a = 4 + (i - 2) * 5
  local status = redis.call('HGET', KEYS[i], 'status')
  if status == 'queued' or status == 'running' or status == 'retrying'
      or status == 'scheduled' then
    redis.call('HSET', KEYS[i], 'status', 'running', 'started_ms', ARGV[1],
      'worker', ARGV[2], 'attempts', ARGV[a + 2])
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*',
      'kind', 'started', 'job', ARGV[a], 'task', ARGV[a + 1], 'attempt', ARGV[a + 2],
      'priority', ARGV[a + 3], 'deliveries', ARGV[a + 4], 'worker', ARGV[2], 'ts', ARGV[1])
    marked = marked + 1
  end
end
return marked
