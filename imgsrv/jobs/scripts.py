"""The job queue's Lua scripts: every state change is one atomic script.

Each script starts with :data:`PRELUDE`, so they share one vocabulary of helpers. ``ARGV[1]`` is
the key prefix ``{<redis_prefix>:jobs}:v1`` and ``ARGV[2]`` the retention of finished records in
milliseconds; the script-specific arguments follow. Every key a script touches starts with
that prefix, whose ``{...}`` part is a Redis Cluster hash tag: the whole queue lives in one slot,
so the scripts may build key names themselves (``KEYS[1]``, a key in that slot, routes the
call). One slot holds the queue of a whole deployment easily: a job is a few hundred bytes.

Time is Redis's own clock (``TIME``), so leases, delays and backoffs mean the same on every
instance whatever their clocks say. Redis 6.2 replicates script effects, not scripts, which is
what makes reading the clock before writing allowed.

Keys (``P`` = the prefix):

``P:job:<id>``                  hash: one job (see :mod:`imgsrv.jobs.model`)
``P:ready:<priority>``          list: ring of tenants with ready jobs of that priority
``P:ready:<priority>:<tenant>`` list: that tenant's ready job ids, oldest first
``P:depth``                     hash: ready jobs per priority (the autoscaling gauge)
``P:cycle``                     hash: jobs started per priority in the current weighted cycle
``P:delayed``                   sorted set: queued jobs not due yet (delay, backoff), by due time
``P:leases``                    sorted set: running jobs by lease expiry
``P:callbacks``                 sorted set: jobs whose callback is due, by due time
``P:idem:<tenant>:<digest>``    string: job id of an idempotency key
``P:submissions``               string: submissions so far (each one writes, see SUBMIT)
``P:tenant:<tenant>:<status>``  sorted set: a tenant's jobs in that status, for listing; scored by
                                creation time while queued/running, by finish time after

A job's hash records ``ready_at``, when it last joined a ready list (the age of the oldest
waiting job is measured from it).
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local RETENTION = tonumber(ARGV[2])
local PRIORITIES = {'high', 'normal', 'low'}

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return P .. ':job:' .. id end
local function index_key(tenant, status) return P .. ':tenant:' .. tenant .. ':' .. status end
local function ring_key(priority) return P .. ':ready:' .. priority end

local function move_index(id, tenant, from, to, score)
    if from then redis.call('ZREM', index_key(tenant, from), id) end
    redis.call('ZADD', index_key(tenant, to), score, id)
end

-- The tenant is in its priority's ring exactly while its list of ready jobs is not empty.
local function push_ready(id, at_head)
    local key = job_key(id)
    local tenant, priority = unpack(redis.call('HMGET', key, 'tenant', 'priority'))
    local list = ring_key(priority) .. ':' .. tenant
    if at_head then redis.call('LPUSH', list, id) else redis.call('RPUSH', list, id) end
    if redis.call('LLEN', list) == 1 then redis.call('RPUSH', ring_key(priority), tenant) end
    redis.call('HINCRBY', P .. ':depth', priority, 1)
    redis.call('HSET', key, 'ready_at', now_ms())
end

local function drop_ready(id, tenant, priority)
    local list = ring_key(priority) .. ':' .. tenant
    if redis.call('LREM', list, 1, id) == 0 then return end
    redis.call('HINCRBY', P .. ':depth', priority, -1)
    if redis.call('LLEN', list) == 0 then redis.call('LREM', ring_key(priority), 1, tenant) end
end

-- Back to queued: at once (ahead of the tenant's other jobs) or after a delay.
local function requeue(id, now, delay)
    local key = job_key(id)
    local tenant, created, status = unpack(
        redis.call('HMGET', key, 'tenant', 'created_at', 'status'))
    redis.call('HSET', key, 'status', 'queued')
    redis.call('HDEL', key, 'lease', 'worker')
    redis.call('ZREM', P .. ':leases', id)
    move_index(id, tenant, status, 'queued', created)
    if delay > 0 then
        redis.call('ZADD', P .. ':delayed', now + delay, id)
    else
        push_ready(id, true)
    end
end

-- A final state: the record and its idempotency key expire after the retention, the
-- callback (if any) becomes due.
local function finish(id, status, now, error)
    local key = job_key(id)
    local tenant, old, callback, idem = unpack(
        redis.call('HMGET', key, 'tenant', 'status', 'callback_url', 'idem'))
    redis.call('HSET', key, 'status', status, 'finished_at', now)
    redis.call('HDEL', key, 'lease')
    if error then redis.call('HSET', key, 'error', error) end
    redis.call('ZREM', P .. ':leases', id)
    move_index(id, tenant, old, status, now)
    -- Entries older than the retention point at records that have expired.
    redis.call('ZREMRANGEBYSCORE', index_key(tenant, status), '-inf', '(' .. (now - RETENTION))
    redis.call('PEXPIRE', key, RETENTION)
    if idem and idem ~= '' then redis.call('PEXPIRE', idem, RETENTION) end
    if callback and callback ~= '' then
        redis.call('HSET', key, 'callback', '{"status":"pending","attempts":0}')
        redis.call('ZADD', P .. ':callbacks', now, id)
    end
end

local WORKER_LOST = '{"type":"urn:imgsrv:problem:worker-lost","title":"Worker lost",'
    .. '"status":500,"detail":"the worker running this job stopped renewing its lease"}'

-- Jobs whose worker stopped renewing the lease: queued again, or failed when out of attempts.
local function reap(now)
    local ids = redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(ids) do
        redis.call('ZREM', P .. ':leases', id)
        local key = job_key(id)
        local status, attempts, max, cancel = unpack(
            redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'cancel'))
        if status == 'running' then
            if cancel == '1' then
                finish(id, 'cancelled', now, false)
            elseif tonumber(attempts) >= tonumber(max) then
                finish(id, 'failed', now, WORKER_LOST)
            else
                requeue(id, now, 0)
            end
        end
    end
    return #ids
end

-- Delayed jobs that are due join the tail of their tenant's ready list.
local function promote(now)
    local ids = redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now, 'LIMIT', 0, 200)
    for _, id in ipairs(ids) do
        redis.call('ZREM', P .. ':delayed', id)
        if redis.call('HGET', job_key(id), 'status') == 'queued' then push_ready(id, false) end
    end
    return #ids
end

-- Weighted cycles: the highest priority with ready jobs that has not used its share of the
-- current cycle goes next; when no priority with ready jobs has a share left, a new cycle
-- starts. With every queue full a cycle is 8 high, 4 normal, 1 low starts (for 8:4:1).
local function pick_priority(weights)
    local cycle = P .. ':cycle'
    for pass = 1, 2 do
        for i, priority in ipairs(PRIORITIES) do
            if redis.call('EXISTS', ring_key(priority)) == 1 and
                    tonumber(redis.call('HGET', cycle, priority) or '0') < weights[i] then
                return priority
            end
        end
        if pass == 1 then redis.call('DEL', cycle) end
    end
    return nil
end
"""

# KEYS[1] job key. ARGV: id, tenant, priority, delay ms, run_at ms (0 = none), idempotency key
# name ('' = none), request JSON, callback URL, max attempts, idempotency key text.
# Returns {id, 1} for a new job, {existing id, 0} for a repeated idempotency key.
SUBMIT = r"""
local id, tenant, priority = ARGV[3], ARGV[4], ARGV[5]
local delay, run_at, idem = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local key = job_key(id)
-- Every submission writes, so that the WAIT after it (durable acceptance) also covers the
-- job an idempotent replay names: replicas apply writes in order.
redis.call('INCR', P .. ':submissions')
-- A client library may resend a script whose reply it lost: the same id is the same job.
if redis.call('EXISTS', key) == 1 then return {id, 0} end
if idem ~= '' then
    local existing = redis.call('GET', idem)
    if existing then return {existing, 0} end
    redis.call('SET', idem, id)
end
local now = now_ms()
local due = now + delay
if run_at > 0 then due = run_at end
redis.call('HSET', key, 'id', id, 'tenant', tenant, 'priority', priority, 'status', 'queued',
    'created_at', now, 'run_at', due, 'attempts', 0, 'max_attempts', ARGV[11],
    'request', ARGV[9], 'callback_url', ARGV[10], 'idem', idem, 'idempotency_key', ARGV[12])
move_index(id, tenant, false, 'queued', now)
if due > now then
    redis.call('ZADD', P .. ':delayed', due, id)
else
    push_ready(id, false)
end
return {id, 1}
"""

# KEYS[1] the depth key. ARGV: worker id, lease token, lease ms, weight high, normal, low.
# Returns {job hash as a flat list or false, leases reaped}.
CLAIM = r"""
local worker, token, lease = ARGV[3], ARGV[4], tonumber(ARGV[5])
local weights = {tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])}
local now = now_ms()
local reaped = reap(now)
promote(now)
for _ = 1, 10 do
    local priority = pick_priority(weights)
    if not priority then return {false, reaped} end
    -- Round robin: the tenant at the head of the ring gives its oldest job and, if it has
    -- more, goes to the back of the ring.
    local ring = ring_key(priority)
    local tenant = redis.call('LPOP', ring)
    local list = ring .. ':' .. tenant
    local id = redis.call('LPOP', list)
    if redis.call('LLEN', list) > 0 then redis.call('RPUSH', ring, tenant) end
    if id then
        redis.call('HINCRBY', P .. ':depth', priority, -1)
        local key = job_key(id)
        -- Only queued jobs are in ready lists; the check keeps a damaged list harmless.
        if redis.call('HGET', key, 'status') == 'queued' then
            redis.call('HINCRBY', P .. ':cycle', priority, 1)
            redis.call('HSET', key, 'status', 'running', 'started_at', now, 'lease', token,
                'worker', worker)
            redis.call('HINCRBY', key, 'attempts', 1)
            redis.call('ZADD', P .. ':leases', now + lease, id)
            move_index(id, tenant, 'queued', 'running', redis.call('HGET', key, 'created_at'))
            return {redis.call('HGETALL', key), reaped}
        end
    end
end
return {false, reaped}
"""

# KEYS[1] job key. ARGV: id, token, lease ms, results JSON ('' = unchanged).
# Returns {1 if the lease is still ours, 1 if cancellation was requested}.
HEARTBEAT = r"""
local id, token, lease, results = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local key = job_key(id)
if redis.call('HGET', key, 'lease') ~= token then return {0, 0} end
redis.call('ZADD', P .. ':leases', now_ms() + lease, id)
if results ~= '' then redis.call('HSET', key, 'results', results) end
return {1, redis.call('HGET', key, 'cancel') == '1' and 1 or 0}
"""

# KEYS[1] job key. ARGV: id, token, final status, results JSON, error JSON ('' = none).
# Returns 1, or 0 when the lease was lost (the job then belongs to someone else).
COMPLETE = r"""
local id, token, status, results, error = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = job_key(id)
if redis.call('HGET', key, 'lease') ~= token then return 0 end
redis.call('HSET', key, 'results', results)
if error == '' then error = false end
finish(id, status, now_ms(), error)
return 1
"""

# KEYS[1] job key. ARGV: id, token, backoff ms, results JSON, error JSON.
# Returns 'queued' (retry after the backoff), 'failed' (no attempts left) or 'lost'.
RETRY = r"""
local id, token, backoff, results, error = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local key = job_key(id)
if redis.call('HGET', key, 'lease') ~= token then return 'lost' end
redis.call('HSET', key, 'results', results, 'error', error)
local now = now_ms()
local attempts, max = unpack(redis.call('HMGET', key, 'attempts', 'max_attempts'))
if tonumber(attempts) >= tonumber(max) then
    finish(id, 'failed', now, false)
    return 'failed'
end
requeue(id, now, backoff)
return 'queued'
"""

# KEYS[1] job key. ARGV: id, token, results JSON. A worker that is shutting down hands the job
# back: queued at the head of its tenant's list, and the interrupted attempt does not count.
RELEASE = r"""
local id, token, results = ARGV[3], ARGV[4], ARGV[5]
local key = job_key(id)
if redis.call('HGET', key, 'lease') ~= token then return 0 end
redis.call('HSET', key, 'results', results)
local now = now_ms()
if redis.call('HGET', key, 'cancel') == '1' then
    finish(id, 'cancelled', now, false)
    return 1
end
redis.call('HINCRBY', key, 'attempts', -1)
requeue(id, now, 0)
return 1
"""

# KEYS[1] job key. ARGV: id, tenant. A queued job is cancelled at once; a running one is
# flagged, and its worker stops between variants. Returns 1 when this call cancelled a queued
# job, 0 otherwise, or false when the tenant has no such job.
CANCEL = r"""
local id, tenant = ARGV[3], ARGV[4]
local key = job_key(id)
local status, owner, priority = unpack(redis.call('HMGET', key, 'status', 'tenant', 'priority'))
if not status or owner ~= tenant then return false end
if status == 'queued' then
    if redis.call('ZREM', P .. ':delayed', id) == 0 then drop_ready(id, tenant, priority) end
    redis.call('HSET', key, 'cancel', 1)
    finish(id, 'cancelled', now_ms(), false)
    return 1
end
if status == 'running' then redis.call('HSET', key, 'cancel', 1) end
return 0
"""

# KEYS[1] the depth key. Reaping and promotion without claiming (idle instances keep the queue
# moving), and the numbers behind the queue metrics:
# {reaped, ready high, ready normal, ready low, delayed, running, callbacks due}.
MAINTAIN = r"""
local now = now_ms()
local reaped = reap(now)
promote(now)
local depth = redis.call('HMGET', P .. ':depth', 'high', 'normal', 'low')
return {reaped, tonumber(depth[1] or 0), tonumber(depth[2] or 0), tonumber(depth[3] or 0),
    redis.call('ZCARD', P .. ':delayed'), redis.call('ZCARD', P .. ':leases'),
    redis.call('ZCOUNT', P .. ':callbacks', '-inf', now)}
"""

# KEYS[1] the callbacks key. ARGV: lease ms, how many. Takes due callbacks and pushes their due
# time past the lease, so that no other process delivers them meanwhile; a process that dies
# while delivering leaves them to be taken again after the lease.
TAKE_CALLBACKS = r"""
local lease, count = tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', P .. ':callbacks', '-inf', now, 'LIMIT', 0, count)
for _, id in ipairs(ids) do redis.call('ZADD', P .. ':callbacks', now + lease, id) end
return ids
"""

# KEYS[1] job key. ARGV: id, delivery state JSON, next try in ms (-1 = no more tries).
CALLBACK_RESULT = r"""
local id, state, retry = ARGV[3], ARGV[4], tonumber(ARGV[5])
local key = job_key(id)
if retry >= 0 and redis.call('EXISTS', key) == 1 then
    redis.call('ZADD', P .. ':callbacks', now_ms() + retry, id)
else
    redis.call('ZREM', P .. ':callbacks', id)
end
if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'callback', state) end
return 1
"""

# KEYS[1] the depth key. Per priority (high, normal, low), the milliseconds for which the job
# that has waited longest is ready: the oldest ``ready_at`` of the jobs at the head of each
# tenant's ready list. A list is in the order its jobs became ready, except jobs handed back
# by a stopping worker, which go first and are claimed first. At most 1000 tenants per
# priority are looked at.
OLDEST_READY = r"""
local now = now_ms()
local waits = {}
for i, priority in ipairs(PRIORITIES) do
    local oldest = now
    local ring = ring_key(priority)
    for _, tenant in ipairs(redis.call('LRANGE', ring, 0, 999)) do
        local id = redis.call('LINDEX', ring .. ':' .. tenant, 0)
        if id then
            local key = job_key(id)
            local since = tonumber(redis.call('HGET', key, 'ready_at')
                or redis.call('HGET', key, 'run_at') or now)
            if since < oldest then oldest = since end
        end
    end
    waits[i] = now - oldest
end
return waits
"""
