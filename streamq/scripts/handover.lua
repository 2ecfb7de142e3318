#!lua flags=allow-oom
-- handover: give the pending messages of a consumer whose process is gone
-- (killed, reaped) to a fresh consumer name now, before their visibility
-- timeout. The caller then starts a worker under that name, which drains its
-- own PEL first (XREADGROUP 0, which adds the delivery). Only an entry still
-- owned by the dead consumer moves: one that a live worker reclaimed since the
-- caller listed it is skipped, so a live worker never loses a job it runs.
-- XCLAIM ... JUSTID with min-idle 0: the claim itself counts no delivery (the
-- drain's read does, once), and the entry's idle time restarts for the new owner.
-- Each handover writes a 'reclaimed' event ('from' the dead consumer, 'worker'
-- the new one, 'how' = 'handover'), indexed in the job's hash when that exists.
-- A repeated run (client retry) finds the entries owned by the new consumer
-- and changes nothing.
--
-- KEYS[1] stream   KEYS[2] events stream   KEYS[3..] the job hash of each message that has a job id, in order
-- ARGV[1] group   ARGV[2] dead consumer   ARGV[3] new consumer   ARGV[4] now ms
-- ARGV[5..] per message: message id, job id ('' for none)
-- reply: the ids handed over
local events_key = KEYS[2]
local found = redis.call('TYPE', events_key)['ok']
if found ~= 'none' and found ~= 'stream' then
  return redis.error_reply('WRONGTYPE ' .. events_key .. ' holds a ' .. found .. ', not a stream')
end
local out = {}
local k = 3
for a = 5, #ARGV - 1, 2 do
  local id, given = ARGV[a], ARGV[a + 1]
  local hash = nil
  if given ~= '' then
    hash = KEYS[k]
    k = k + 1
  end
  local ok, pending = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], id, id, 1)
  local p = ok and pending[1]
  if p and p[2] == ARGV[2] then
    local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
    local task, job = '', ''
    if entry then
      local fields = entry[2]
      for f = 1, #fields - 1, 2 do
        if fields[f] == 'task' and task == '' then task = fields[f + 1] end
        if fields[f] == 'id' and job == '' then job = fields[f + 1] end
      end
    end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, id, 'JUSTID')
    out[#out + 1] = id
    local event_id = redis.call('XADD', events_key, '*', 'kind', 'reclaimed', 'job', job,
      'task', task, 'msg', id, 'from', ARGV[2], 'worker', ARGV[3], 'deliveries', p[4],
      'idle_ms', p[3], 'how', 'handover', 'ts', ARGV[4])
    if hash and job == given and redis.call('TYPE', hash)['ok'] == 'hash' then
      redis.call('HSET', hash, string.format('ev:%s', event_id), 'reclaimed')
    end
  end
end
return out
