#!lua flags=allow-oom
-- progress: record a running job's progress in its hash and as an event.
-- Only while the job is running, so a late report from a worker that lost the
-- job cannot write over a finished one.
--
-- KEYS[1] job hash   KEYS[2] events stream
-- ARGV[1] percent   ARGV[2] message   ARGV[3] now ms   ARGV[4] job id   ARGV[5] task
-- ARGV[6] attempt   ARGV[7] worker   ARGV[8] events maxlen
-- reply: 1 recorded, 0 the job is not running
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1], 'progress_msg', ARGV[2], 'progress_ms', ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'kind', 'progress', 'job', ARGV[4],
  'task', ARGV[5], 'attempt', ARGV[6], 'worker', ARGV[7], 'progress', ARGV[1],
  'message', ARGV[2], 'ts', ARGV[3])
return 1
