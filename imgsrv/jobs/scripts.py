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
``P:replays``                   string: idempotent replays so far (see SUBMIT)
``P:tenant:<tenant>:<status>``  sorted set: a tenant's jobs in that status, for listing; scored by
                                creation time while queued/running, by finish time after
``P:all:<status>``              sorted set: the same across tenants (the admin's listing)
``P:since:<priority>:<tenant>`` sorted set: that tenant's ready jobs by the time they became ready
                                (the age of the oldest waiting job; the job's hash keeps the same
                                time as ``ready_at``, for the wait its claim measures)
``P:paused``                    set: paused priorities (nothing of theirs starts)
``P:blocked``                   sorted set: queued jobs waiting for their dependencies, by creation
``P:dependents:<id>``           set: jobs waiting for job ``<id>`` to finish
``P:timeline:<id>``             list: a job's events (JSON), oldest first, the last 100
``P:workers``                   sorted set: registered worker processes by last heartbeat
``P:worker:<id>``               hash: one worker process (see :mod:`imgsrv.jobs.registry`)
``P:schedules``                 sorted set: cron schedules by next run
``P:schedule:<id>``             hash: one schedule (see :mod:`imgsrv.jobs.schedules`)
``P:tenant:<tenant>:schedules`` sorted set: a tenant's schedules by creation
"""

from __future__ import annotations

PRELUDE = r"""
local P = ARGV[1]
local RETENTION = tonumber(ARGV[2])
local PRIORITIES = {'high', 'normal', 'low'}
local TIMELINE_LENGTH = 100

local function now_ms()
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function job_key(id) return P .. ':job:' .. id end
local function index_key(tenant, status) return P .. ':tenant:' .. tenant .. ':' .. status end
local function ring_key(priority) return P .. ':ready:' .. priority end
local function since_key(priority, tenant) return P .. ':since:' .. priority .. ':' .. tenant end

-- One event of the job's timeline: {at, event, ...fields}.
local function record(id, now, event, fields)
    local entry = fields or {}
    entry['at'] = now
    entry['event'] = event
    local key = P .. ':timeline:' .. id
    redis.call('RPUSH', key, cjson.encode(entry))
    redis.call('LTRIM', key, -TIMELINE_LENGTH, -1)
end

local function move_index(id, tenant, from, to, score)
    if from then
        redis.call('ZREM', index_key(tenant, from), id)
        redis.call('ZREM', P .. ':all:' .. from, id)
    end
    redis.call('ZADD', index_key(tenant, to), score, id)
    redis.call('ZADD', P .. ':all:' .. to, score, id)
end

-- The tenant is in its priority's ring exactly while its list of ready jobs is not empty.
local function push_ready(id, at_head)
    local key = job_key(id)
    local tenant, priority = unpack(redis.call('HMGET', key, 'tenant', 'priority'))
    local list = ring_key(priority) .. ':' .. tenant
    if at_head then redis.call('LPUSH', list, id) else redis.call('RPUSH', list, id) end
    if redis.call('LLEN', list) == 1 then redis.call('RPUSH', ring_key(priority), tenant) end
    redis.call('HINCRBY', P .. ':depth', priority, 1)
    redis.call('ZADD', since_key(priority, tenant), now_ms(), id)
    redis.call('HSET', key, 'ready_at', now_ms())
end

-- Returns true when the job was in its tenant's ready list.
local function drop_ready(id, tenant, priority)
    local list = ring_key(priority) .. ':' .. tenant
    if redis.call('LREM', list, 1, id) == 0 then return false end
    redis.call('HINCRBY', P .. ':depth', priority, -1)
    redis.call('ZREM', since_key(priority, tenant), id)
    if redis.call('LLEN', list) == 0 then redis.call('LREM', ring_key(priority), 1, tenant) end
    return true
end

-- A queued job whose dependencies are done: ready now, or at its start time.
local function release(id, now)
    local due = tonumber(redis.call('HGET', job_key(id), 'run_at') or '0')
    if due > now then
        redis.call('ZADD', P .. ':delayed', due, id)
    else
        push_ready(id, false)
    end
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

local function dependency_problem(id, status)
    return cjson.encode({type = 'urn:imgsrv:problem:dependency-failed',
        title = 'Dependency failed', status = 424,
        detail = 'dependency_failed: job ' .. id .. ' ' .. status, dependency = id})
end

-- One final state: the record and its idempotency key expire after the retention, the
-- callback (if any) becomes due. Returns the jobs waiting for this one.
local function finish_one(id, status, now, error)
    local key = job_key(id)
    local tenant, old, callback, idem = unpack(
        redis.call('HMGET', key, 'tenant', 'status', 'callback_url', 'idem'))
    redis.call('HSET', key, 'status', status, 'finished_at', now)
    redis.call('HDEL', key, 'lease')
    if error then redis.call('HSET', key, 'error', error) end
    redis.call('ZREM', P .. ':leases', id)
    redis.call('ZREM', P .. ':blocked', id)
    move_index(id, tenant, old, status, now)
    -- Entries older than the retention point at records that have expired.
    local horizon = '(' .. (now - RETENTION)
    redis.call('ZREMRANGEBYSCORE', index_key(tenant, status), '-inf', horizon)
    redis.call('ZREMRANGEBYSCORE', P .. ':all:' .. status, '-inf', horizon)
    record(id, now, status)
    redis.call('PEXPIRE', key, RETENTION)
    redis.call('PEXPIRE', P .. ':timeline:' .. id, RETENTION)
    if idem and idem ~= '' then redis.call('PEXPIRE', idem, RETENTION) end
    if callback and callback ~= '' then
        redis.call('HSET', key, 'callback', '{"status":"pending","attempts":0}')
        redis.call('ZADD', P .. ':callbacks', now, id)
    end
    local dependents_key = P .. ':dependents:' .. id
    local dependents = redis.call('SMEMBERS', dependents_key)
    redis.call('DEL', dependents_key)
    return dependents
end

-- A final state and its consequences down the dependency graph: a dependent whose last
-- dependency succeeded becomes ready; one whose dependency failed fails, one whose dependency
-- was cancelled is cancelled, and so on to their own dependents (a worklist, not recursion).
local function finish(id, status, now, error)
    local work = {{id, status, error}}
    while #work > 0 do
        local item = table.remove(work)
        local done = finish_one(item[1], item[2], now, item[3])
        for _, dependent in ipairs(done) do
            local key = job_key(dependent)
            if redis.call('HGET', key, 'status') == 'queued' then
                if item[2] == 'succeeded' then
                    if redis.call('HINCRBY', key, 'pending', -1) <= 0 then
                        redis.call('ZREM', P .. ':blocked', dependent)
                        record(dependent, now, 'ready', {reason = 'dependencies succeeded'})
                        release(dependent, now)
                    end
                else
                    if redis.call('ZREM', P .. ':delayed', dependent) == 0 then
                        local tenant, priority = unpack(
                            redis.call('HMGET', key, 'tenant', 'priority'))
                        drop_ready(dependent, tenant, priority)
                    end
                    if item[2] == 'cancelled' then
                        redis.call('HSET', key, 'cancel', 1)
                        table.insert(work, {dependent, 'cancelled', false})
                    else
                        table.insert(work, {dependent, 'failed',
                            dependency_problem(item[1], item[2])})
                    end
                end
            end
        end
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
        local status, attempts, max, cancel, worker = unpack(
            redis.call('HMGET', key, 'status', 'attempts', 'max_attempts', 'cancel', 'worker'))
        if status == 'running' then
            record(id, now, 'lease expired', {worker = worker})
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

local function owns(owner, tenant)
    return owner and (tenant == '' or owner == tenant)
end

local function paused(priority)
    return redis.call('SISMEMBER', P .. ':paused', priority) == 1
end

-- Weighted cycles: the highest priority with ready jobs that has not used its share of the
-- current cycle goes next; when no priority with ready jobs has a share left, a new cycle
-- starts. With every queue full a cycle is 8 high, 4 normal, 1 low starts (for 8:4:1).
-- Paused priorities take no part.
local function pick_priority(weights)
    local cycle = P .. ':cycle'
    for pass = 1, 2 do
        for i, priority in ipairs(PRIORITIES) do
            if redis.call('EXISTS', ring_key(priority)) == 1 and not paused(priority) and
                    tonumber(redis.call('HGET', cycle, priority) or '0') < weights[i] then
                return priority
            end
        end
        if pass == 1 then redis.call('DEL', cycle) end
    end
    return nil
end

-- Dependencies of a job being queued: every one must be a job of the tenant that has not
-- failed or been cancelled, and none may lead back to the job itself. Returns the ones still
-- to finish, or nil and the problem ('missing', 'failed', 'cycle') and the dependency's id.
local function check_dependencies(id, tenant, deps)
    local open = {}
    for _, dep in ipairs(deps) do
        local status, owner = unpack(redis.call('HMGET', job_key(dep), 'status', 'tenant'))
        if not status or owner ~= tenant then return nil, 'missing', dep end
        if status == 'failed' or status == 'cancelled' then return nil, 'failed', dep end
        if status ~= 'succeeded' then table.insert(open, dep) end
    end
    -- Walk the graph below the dependencies (bounded); reaching the job is a cycle.
    local seen, stack, steps = {}, {}, 0
    for _, dep in ipairs(deps) do table.insert(stack, dep) end
    while #stack > 0 and steps < 10000 do
        local current = table.remove(stack)
        steps = steps + 1
        if current == id then return nil, 'cycle', current end
        if not seen[current] then
            seen[current] = true
            local below = redis.call('HGET', job_key(current), 'deps')
            if below and below ~= '' then
                for _, next_id in ipairs(cjson.decode(below)) do table.insert(stack, next_id) end
            end
        end
    end
    return open
end

-- Wait for the open dependencies, or start (now or at the job's start time, its run_at).
local function enqueue(id, open, now)
    if #open > 0 then
        redis.call('HSET', job_key(id), 'pending', #open)
        for _, dep in ipairs(open) do redis.call('SADD', P .. ':dependents:' .. dep, id) end
        redis.call('ZADD', P .. ':blocked', now, id)
    else
        release(id, now)
    end
end

-- A new job. Returns {id, 1} for a new job, {existing id, 0} for a repeated idempotency key,
-- or {false, problem, dependency id} when a dependency refuses it (nothing is written then).
local function create_job(id, tenant, priority, delay, run_at, idem, request, callback,
        max_attempts, idem_text, deps_json)
    local key = job_key(id)
    -- A client library may resend a script whose reply it lost: the same id is the same job.
    if redis.call('EXISTS', key) == 1 then return {id, 0} end
    if idem ~= '' then
        local existing = redis.call('GET', idem)
        if existing then return {existing, 0} end
    end
    local deps = {}
    if deps_json ~= '' then deps = cjson.decode(deps_json) end
    local open, problem, culprit = check_dependencies(id, tenant, deps)
    if not open then return {false, problem, culprit} end
    if idem ~= '' then redis.call('SET', idem, id) end
    local now = now_ms()
    local due = now + delay
    if run_at > 0 then due = run_at end
    redis.call('HSET', key, 'id', id, 'tenant', tenant, 'priority', priority, 'status', 'queued',
        'created_at', now, 'run_at', due, 'attempts', 0, 'max_attempts', max_attempts,
        'request', request, 'callback_url', callback, 'idem', idem, 'idempotency_key', idem_text,
        'deps', deps_json, 'pending', 0)
    move_index(id, tenant, false, 'queued', now)
    record(id, now, 'submitted', {priority = priority, waiting_for = #open})
    enqueue(id, open, now)
    return {id, 1}
end
"""

# KEYS[1] job key. ARGV: id, tenant, priority, delay ms, run_at ms (0 = none), idempotency key
# name ('' = none), request JSON, callback URL, max attempts, idempotency key text,
# dependencies JSON ('' = none). Returns what ``create_job`` returns.
SUBMIT = r"""
local reply = create_job(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]),
    ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13])
-- A replay writes nothing else: this write makes the WAIT after it (durable acceptance) cover
-- the job it names too, since replicas apply writes in order.
if reply[1] and reply[2] == 0 then redis.call('INCR', P .. ':replays') end
return reply
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
        redis.call('ZREM', since_key(priority, tenant), id)
        local key = job_key(id)
        -- Only queued jobs are in ready lists; the check keeps a damaged list harmless.
        if redis.call('HGET', key, 'status') == 'queued' then
            redis.call('HINCRBY', P .. ':cycle', priority, 1)
            redis.call('HSET', key, 'status', 'running', 'started_at', now, 'lease', token,
                'worker', worker)
            local attempt = redis.call('HINCRBY', key, 'attempts', 1)
            redis.call('ZADD', P .. ':leases', now + lease, id)
            move_index(id, tenant, 'queued', 'running', redis.call('HGET', key, 'created_at'))
            record(id, now, 'started', {attempt = attempt, worker = worker})
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
record(id, now, 'retry', {in_ms = backoff})
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
record(id, now, 'released', {reason = 'worker shutting down'})
requeue(id, now, 0)
return 1
"""

# KEYS[1] job key. ARGV: id, tenant ('' = any: the admin). A queued job is cancelled at once
# (and the jobs waiting for it with it); a running one is flagged, and its worker stops between
# variants. Returns 1 when this call cancelled a queued job, 0 otherwise, or false when there is
# no such job (for this tenant).
CANCEL = r"""
local id, tenant = ARGV[3], ARGV[4]
local key = job_key(id)
local status, owner, priority = unpack(redis.call('HMGET', key, 'status', 'tenant', 'priority'))
if not status or not owns(owner, tenant) then return false end
local now = now_ms()
if status == 'queued' then
    if redis.call('ZREM', P .. ':delayed', id) == 0 then drop_ready(id, owner, priority) end
    redis.call('HSET', key, 'cancel', 1)
    finish(id, 'cancelled', now, false)
    return 1
end
if status == 'running' and redis.call('HGET', key, 'cancel') ~= '1' then
    redis.call('HSET', key, 'cancel', 1)
    record(id, now, 'cancel requested')
end
return 0
"""

# KEYS[1] job key. ARGV: id, tenant ('' = any), max attempts. A failed or cancelled job is queued
# again under the same id: attempts, results, error and callback state start afresh, and the
# record no longer expires. Its dependencies are checked again: one that failed refuses the
# retry; expired ones finished long ago and count as done.
# Returns {'queued'}, {'unchanged'} (already queued), {'conflict', status},
# {'dependency', id} or {false} (no such job).
RERUN = r"""
local id, tenant, max_attempts = ARGV[3], ARGV[4], ARGV[5]
local key = job_key(id)
local status, owner, deps_json, created, idem = unpack(
    redis.call('HMGET', key, 'status', 'tenant', 'deps', 'created_at', 'idem'))
if not status or not owns(owner, tenant) then return {false} end
if status == 'queued' then return {'unchanged'} end
if status ~= 'failed' and status ~= 'cancelled' then return {'conflict', status} end
local open = {}
if deps_json and deps_json ~= '' then
    for _, dep in ipairs(cjson.decode(deps_json)) do
        local dep_status = redis.call('HGET', job_key(dep), 'status')
        if dep_status == 'failed' or dep_status == 'cancelled' then return {'dependency', dep} end
        if dep_status and dep_status ~= 'succeeded' then table.insert(open, dep) end
    end
end
local now = now_ms()
redis.call('HDEL', key, 'error', 'results', 'started_at', 'finished_at', 'cancel', 'lease',
    'worker', 'callback')
redis.call('HSET', key, 'status', 'queued', 'attempts', 0, 'max_attempts', max_attempts,
    'run_at', now, 'pending', 0)
redis.call('PERSIST', key)
redis.call('PERSIST', P .. ':timeline:' .. id)
if idem and idem ~= '' then redis.call('PERSIST', idem) end
redis.call('ZREM', P .. ':callbacks', id)
move_index(id, owner, status, 'queued', created)
record(id, now, 'retried', {waiting_for = #open})
enqueue(id, open, now)
return {'queued'}
"""

# KEYS[1] job key. ARGV: id, tenant ('' = any), priority. A queued job moves to another
# priority; a ready one takes the place in its tenant's list that its creation time gives it.
# Returns {'moved'}, {'unchanged'}, {'conflict', status} or {false} (no such job).
SET_PRIORITY = r"""
local id, tenant, priority = ARGV[3], ARGV[4], ARGV[5]
local key = job_key(id)
local status, owner, old, created = unpack(
    redis.call('HMGET', key, 'status', 'tenant', 'priority', 'created_at'))
if not status or not owns(owner, tenant) then return {false} end
if status ~= 'queued' then return {'conflict', status} end
if old == priority then return {'unchanged'} end
local now = now_ms()
local since = redis.call('ZSCORE', since_key(old, owner), id)
local was_ready = drop_ready(id, owner, old)
redis.call('HSET', key, 'priority', priority)
if was_ready then
    local list = ring_key(priority) .. ':' .. owner
    local ids = redis.call('LRANGE', list, 0, -1)
    local before = nil
    for _, other in ipairs(ids) do
        local other_created = redis.call('HGET', job_key(other), 'created_at') or '0'
        if tonumber(other_created) > tonumber(created) then
            before = other
            break
        end
    end
    if before then
        redis.call('LINSERT', list, 'BEFORE', before, id)
    else
        redis.call('RPUSH', list, id)
    end
    if redis.call('LLEN', list) == 1 then redis.call('RPUSH', ring_key(priority), owner) end
    redis.call('HINCRBY', P .. ':depth', priority, 1)
    redis.call('ZADD', since_key(priority, owner), since or now, id)
end
record(id, now, 'priority', {from = old, to = priority})
return {'moved'}
"""

# KEYS[1] the paused set. ARGV: priority, 1 to pause or 0 to resume. Returns 1 when it changed.
PAUSE = r"""
local priority, pause = ARGV[3], ARGV[4] == '1'
if pause then return redis.call('SADD', P .. ':paused', priority) end
return redis.call('SREM', P .. ':paused', priority)
"""

# KEYS[1] the depth key. The numbers of GET /v1/queues, as JSON: per priority its ready jobs,
# whether it is paused, when its oldest ready job became ready, and the same per tenant; the
# delayed, blocked (waiting for dependencies) and running jobs; Redis's clock.
QUEUE_STATS = r"""
local now = now_ms()
local out = {now = now, priorities = {}}
for _, priority in ipairs(PRIORITIES) do
    local entry = {priority = priority, paused = paused(priority), oldest_at = false,
        depth = tonumber(redis.call('HGET', P .. ':depth', priority) or '0'), tenants = {}}
    for _, tenant in ipairs(redis.call('LRANGE', ring_key(priority), 0, -1)) do
        local oldest = redis.call('ZRANGE', since_key(priority, tenant), 0, 0, 'WITHSCORES')[2]
        local row = {tenant = tenant, oldest_at = false,
            depth = redis.call('LLEN', ring_key(priority) .. ':' .. tenant)}
        if oldest then
            row.oldest_at = tonumber(oldest)
            if not entry.oldest_at or row.oldest_at < entry.oldest_at then
                entry.oldest_at = row.oldest_at
            end
        end
        table.insert(entry.tenants, row)
    end
    table.insert(out.priorities, entry)
end
out.delayed = redis.call('ZCARD', P .. ':delayed')
out.blocked = redis.call('ZCARD', P .. ':blocked')
out.running = redis.call('ZCARD', P .. ':leases')
return cjson.encode(out)
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

# --------------------------------------------------------------------------- worker registry

# KEYS[1] the workers key. ARGV: worker id, its description (JSON object of strings and
# numbers), the jobs it runs now (JSON), how long records of silent workers are kept (ms).
# Returns Redis's clock.
WORKER_BEAT = r"""
local id, info, current, keep = ARGV[3], cjson.decode(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local now = now_ms()
local key = P .. ':worker:' .. id
local flat = {}
for name, value in pairs(info) do
    table.insert(flat, name)
    table.insert(flat, tostring(value))
end
redis.call('HSET', key, 'id', id, 'beat', now, 'current', current, unpack(flat))
redis.call('HDEL', key, 'stopped_at')
redis.call('PEXPIRE', key, keep)
redis.call('ZADD', P .. ':workers', now, id)
for _, old in ipairs(redis.call('ZRANGEBYSCORE', P .. ':workers', '-inf', '(' .. (now - keep))) do
    redis.call('ZREM', P .. ':workers', old)
    redis.call('DEL', P .. ':worker:' .. old)
end
return now
"""

# KEYS[1] the workers key. ARGV: worker id. A worker that stops says so (offline at once).
WORKER_STOP = r"""
local key = P .. ':worker:' .. ARGV[3]
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, 'stopped_at', now_ms(), 'current', '[]')
return 1
"""

# KEYS[1] the workers key. Returns Redis's time in ms, then each registered worker's record
# (HGETALL, flat) in the order of their last heartbeat, newest first. One call on the queue's
# slot: a Cluster pipeline may not hold TIME.
WORKER_LIST = r"""
local out = {now_ms()}
for _, id in ipairs(redis.call('ZREVRANGE', P .. ':workers', 0, -1)) do
    table.insert(out, redis.call('HGETALL', P .. ':worker:' .. id))
end
return out
"""

# --------------------------------------------------------------------------- schedules

# KEYS[1] schedule key. ARGV: id, tenant, fields (JSON object of strings), first run ms, most
# schedules per tenant. Returns 1, or 0 when the tenant has the most schedules already.
CREATE_SCHEDULE = r"""
local id, tenant, fields, next_run, limit = ARGV[3], ARGV[4], cjson.decode(ARGV[5]),
    ARGV[6], tonumber(ARGV[7])
local index = P .. ':tenant:' .. tenant .. ':schedules'
if redis.call('ZCARD', index) >= limit then return 0 end
local now = now_ms()
local key = P .. ':schedule:' .. id
local flat = {}
for name, value in pairs(fields) do
    table.insert(flat, name)
    table.insert(flat, value)
end
redis.call('HSET', key, 'id', id, 'tenant', tenant, 'created_at', now, 'next_run', next_run,
    'fired', 0, unpack(flat))
redis.call('ZADD', P .. ':schedules', next_run, id)
redis.call('ZADD', index, now, id)
return 1
"""

# KEYS[1] schedule key. ARGV: id, tenant ('' = any). Returns 1, or false for no such schedule.
DELETE_SCHEDULE = r"""
local id, tenant = ARGV[3], ARGV[4]
local key = P .. ':schedule:' .. id
local owner = redis.call('HGET', key, 'tenant')
if not owns(owner, tenant) then return false end
redis.call('DEL', key)
redis.call('ZREM', P .. ':schedules', id)
redis.call('ZREM', P .. ':tenant:' .. owner .. ':schedules', id)
return 1
"""

# KEYS[1] the schedules key. ARGV: how many. Schedules that are due:
# {now, {id, next run, cron, timezone}, ...}.
DUE_SCHEDULES = r"""
local now = now_ms()
local out = {now}
local due = redis.call('ZRANGEBYSCORE', P .. ':schedules', '-inf', now, 'LIMIT', 0,
    tonumber(ARGV[3]))
for _, id in ipairs(due) do
    local next_run, cron, timezone = unpack(
        redis.call('HMGET', P .. ':schedule:' .. id, 'next_run', 'cron', 'timezone'))
    if next_run then
        table.insert(out, {id, next_run, cron, timezone})
    else
        redis.call('ZREM', P .. ':schedules', id)
    end
end
return out
"""

# KEYS[1] schedule key. ARGV: schedule id, the run being fired (ms, as DUE_SCHEDULES gave it),
# the run after it (ms), the new job's id, max attempts. Fires the schedule only if that run is
# still its next one, so among any number of processes that saw it due exactly one fires it.
# Returns the new job's id, or false when another process fired it first.
FIRE_SCHEDULE = r"""
local id, expected, following, job_id, max_attempts = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = P .. ':schedule:' .. id
local next_run, tenant, priority, request, callback = unpack(
    redis.call('HMGET', key, 'next_run', 'tenant', 'priority', 'request', 'callback_url'))
if next_run ~= expected then return false end
create_job(job_id, tenant, priority, 0, 0, '', request, callback or '', max_attempts, '', '')
redis.call('HSET', job_key(job_id), 'schedule', id)
redis.call('HSET', key, 'next_run', following, 'last_run', now_ms(), 'last_job', job_id)
redis.call('HINCRBY', key, 'fired', 1)
redis.call('ZADD', P .. ':schedules', following, id)
return job_id
"""
