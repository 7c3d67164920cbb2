-- nursery-worker schema version 6: flow control.
--   * workflows: a job may depend on other jobs; it waits in the new state 'pending' until every
--     dependency completed, and is cancelled (naming the dependency) when one is discarded or cancelled;
--   * global limits: per task (optionally partitioned by a key from the arguments) and per queue,
--     a concurrency cap and a sliding-window rate limit, enforced where jobs are claimed;
--   * circuit breakers: per task, held back after N consecutive failures, then one probe.
-- {schema} is replaced by the configured schema, quoted as an identifier.

ALTER TABLE {schema}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {schema}.jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('pending', 'scheduled', 'available', 'executing', 'retryable',
                     'completed', 'discarded', 'cancelled'));

ALTER TABLE {schema}.jobs
    -- The jobs this one waits for (distinct ids), and how many of them have not completed yet.
    ADD COLUMN depends_on     bigint[],
    ADD COLUMN pending_deps   integer NOT NULL DEFAULT 0,
    -- Set on a job once another job depends on it: only such jobs fire the dependency trigger.
    ADD COLUMN has_dependents boolean NOT NULL DEFAULT false,
    -- NULL for a job of a task without limits or breaker (the fast claim); otherwise the partition
    -- of its task's limits ('' when the task's limits are not partitioned).
    ADD COLUMN limit_key      text;

-- Pending jobs by dependency, for the trigger below, and by queue, for counts. Empty unless
-- workflows are in use.
CREATE INDEX jobs_pending_deps_idx ON {schema}.jobs USING gin (depends_on) WHERE state = 'pending';
CREATE INDEX jobs_pending_idx ON {schema}.jobs (queue) WHERE state = 'pending';

-- A pending job is queued: it holds its unique key like the other queued and running states.
DROP INDEX {schema}.jobs_unique_idx;
CREATE UNIQUE INDEX jobs_unique_idx ON {schema}.jobs (task, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'scheduled', 'available', 'executing', 'retryable');

-- The fast claim serves jobs without task limits; limited jobs have their own index, by group.
DROP INDEX {schema}.jobs_fetch_idx;
CREATE INDEX jobs_fetch_idx ON {schema}.jobs (queue, priority DESC, scheduled_at, id)
    WHERE state = 'available' AND limit_key IS NULL;
CREATE INDEX jobs_limited_idx ON {schema}.jobs (queue, task, limit_key, priority DESC, scheduled_at, id)
    WHERE state = 'available' AND limit_key IS NOT NULL;
CREATE INDEX jobs_limited_executing_idx ON {schema}.jobs (task, limit_key)
    WHERE state = 'executing' AND limit_key IS NOT NULL;

-- Queue limits, stored with the queue's pause flag: set once, honoured by every worker.
ALTER TABLE {schema}.queues
    ADD COLUMN max_concurrency integer CHECK (max_concurrency >= 1),
    ADD COLUMN rate_limit      integer CHECK (rate_limit >= 1),
    ADD COLUMN rate_period     double precision CHECK (rate_period > 0);

-- Rate limits spread starts evenly (GCRA): a scope ('t:<task>:<partition>' or 'q:<queue>') with a
-- rate of count per period lets a job start every period/count seconds; "tat" is when the next slot
-- opens. At most count starts fall in any window of one period, and in any window of W seconds at
-- most W * count / period + 1, at every rate up to 50 per second; above that, slots are claimed in
-- bursts of at most count * 20 ms / period so that a claim round trip can keep up.
CREATE TABLE {schema}.rate_limits (
    scope text        PRIMARY KEY,
    tat   timestamptz NOT NULL
);

-- How many jobs of a rate-limited scope may start now, and in how many seconds the next may.
CREATE FUNCTION {schema}.nw_rate_room(p_scope text, p_count integer, p_period double precision,
                                      p_now timestamptz, OUT room integer, OUT wait double precision)
LANGUAGE plpgsql AS $$
DECLARE
    slot double precision := p_period / p_count;
    burst integer := greatest(1, floor(p_count * 0.02 / p_period)::integer);
    tat timestamptz;
    ahead double precision;
BEGIN
    SELECT r.tat INTO tat FROM {schema}.rate_limits AS r WHERE r.scope = p_scope;
    ahead := greatest(0, extract(epoch FROM coalesce(tat, p_now) - p_now));
    room := greatest(0, burst - ceil(ahead / slot - 1e-9)::integer);
    wait := CASE WHEN room > 0 THEN NULL ELSE greatest(0.001, ahead - (burst - 1) * slot) END;
END
$$;

-- Take *n* slots of a scope that nw_rate_room allowed.
CREATE FUNCTION {schema}.nw_rate_take(p_scope text, p_count integer, p_period double precision,
                                      p_now timestamptz, p_n integer) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO {schema}.rate_limits AS r (scope, tat)
    VALUES (p_scope, p_now + p_n * (p_period / p_count) * interval '1 second')
    ON CONFLICT (scope) DO UPDATE
    SET tat = greatest(r.tat, p_now) + p_n * (p_period / p_count) * interval '1 second'
$$;

-- Circuit breakers, one row per task that has one (written by the workers that run it).
CREATE TABLE {schema}.breakers (
    task         text        PRIMARY KEY,
    threshold    integer     NOT NULL CHECK (threshold >= 1),
    cooldown     double precision NOT NULL CHECK (cooldown > 0),
    state        text        NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    failures     integer     NOT NULL DEFAULT 0,
    opened_at    timestamptz,
    probe_job_id bigint,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- When a job with dependents finishes for good, release or cancel them. A trigger, so that every
-- path to a final state (a worker's outcome, a rescue, a cancel, a cascade) is covered, and the
-- dependents are found with the statement's own changes visible.
CREATE FUNCTION {schema}.nw_release_dependents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    channel text := TG_TABLE_SCHEMA || '_events';
    n integer;
BEGIN
    IF NEW.state = 'completed' THEN
        WITH released AS (
            UPDATE {schema}.jobs AS d
            SET pending_deps = d.pending_deps - 1,
                state = CASE WHEN d.pending_deps > 1 THEN 'pending'
                             WHEN d.scheduled_at > now() THEN 'scheduled' ELSE 'available' END
            WHERE d.state = 'pending' AND d.depends_on @> ARRAY[NEW.id]
            RETURNING d.queue, d.state
        )
        SELECT count(*) INTO n FROM (
            SELECT pg_notify(channel, 'available:' || q.queue)
            FROM (SELECT DISTINCT queue FROM released WHERE state = 'available') AS q
        ) AS z;
    ELSE
        WITH doomed AS (
            UPDATE {schema}.jobs AS d
            SET state = 'cancelled', finished_at = now(), pending_deps = 0,
                errors = d.errors || jsonb_build_array(jsonb_build_object(
                    'type', 'DependencyFailed',
                    'message', format('dependency %s (%s) was %s, so this job will not run',
                                      NEW.id, NEW.task, NEW.state),
                    'traceback', '', 'at', now(), 'attempt', d.attempt))
            WHERE d.state = 'pending' AND d.depends_on @> ARRAY[NEW.id]
            RETURNING d.id
        )
        SELECT count(*) INTO n FROM (
            SELECT pg_notify(channel, 'finished:' || string_agg(id::text, ','))
            FROM doomed HAVING count(*) > 0
        ) AS z;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_release_dependents
    AFTER UPDATE OF state ON {schema}.jobs
    FOR EACH ROW
    WHEN (NEW.has_dependents AND NEW.state IN ('completed', 'discarded', 'cancelled')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION {schema}.nw_release_dependents();

-- When a job of a limited task leaves executing, other workers may claim again. Circuit breakers
-- count the outcomes workers write: a success closes the breaker, a failure
-- (retryable or discarded by the worker; not a rescue, a snooze, a release or a cancel) counts
-- towards opening it. A failed probe opens it again at once.
CREATE FUNCTION {schema}.nw_limited_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A slot of a concurrency limit is free: nudge the workers of the queue.
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_events', 'available:' || NEW.queue);
    IF NEW.state = 'completed' THEN
        UPDATE {schema}.breakers
        SET state = 'closed', failures = 0, opened_at = NULL, probe_job_id = NULL, updated_at = now()
        WHERE task = NEW.task AND (state <> 'closed' OR failures <> 0);
    ELSIF NEW.state IN ('retryable', 'discarded')
          AND coalesce(NEW.errors -> -1 ->> 'type', '') NOT IN ('WorkerLost', 'Cancelled') THEN
        UPDATE {schema}.breakers
        SET failures = failures + 1,
            state = CASE WHEN state = 'half_open' OR failures + 1 >= threshold THEN 'open' ELSE state END,
            opened_at = CASE WHEN state = 'half_open' OR failures + 1 >= threshold THEN now() ELSE opened_at END,
            probe_job_id = NULL,
            updated_at = now()
        WHERE task = NEW.task;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_limited_finished
    AFTER UPDATE OF state ON {schema}.jobs
    FOR EACH ROW
    WHEN (OLD.state = 'executing' AND NEW.limit_key IS NOT NULL AND NEW.state <> 'executing')
    EXECUTE FUNCTION {schema}.nw_limited_finished();

-- The claim of limited jobs: those of tasks with limits or a breaker (p_cfg, from the worker's
-- registry: an object of task name to {{"c": max concurrency, "r": rate, "p": period seconds, "b": true}}) and those
-- of queues with limits. Claims of limited jobs are serialised per schema by an advisory lock, so
-- the counts read below stay true until the claim commits: two workers never overshoot. Returns
-- the claimed jobs, then (id NULL) a row whose "wake" says in how many seconds a rate window or a
-- breaker's cooldown frees capacity, and rows whose "note" names a breaker holding jobs back.
CREATE FUNCTION {schema}.nw_claim_limited(p_worker text, p_queues text[], p_limit integer, p_cfg jsonb,
                                          p_adopt boolean)
RETURNS TABLE (
    id bigint, task text, queue text, args jsonb, state text, attempt integer, max_attempts integer,
    priority integer, scheduled_at timestamptz, inserted_at timestamptz, attempted_at timestamptz,
    finished_at timestamptz, errors jsonb, worker_id text, result jsonb, cancel_requested_at timestamptz,
    unique_key text, retry_policy jsonb, trace_context jsonb, wake double precision, note text
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g record;
    b record;
    qc integer;
    qr integer;
    qp double precision;
    cfg jsonb;
    cap integer;
    room integer;
    taken integer := 0;
    got integer;
    n integer;
    v_room integer;
    v_wait double precision;
    v_now timestamptz;
    v_wake double precision;
    v_probe boolean;
    v_probe_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('nursery_worker_limits:' || '{schema}'));
    -- The database's clock after the lock: the windows are measured from when the claim happens.
    v_now := clock_timestamp();
    -- Now and then (p_adopt), jobs of limited tasks deferred by a producer that did not know the
    -- limits (no key) join the unpartitioned share. Until then no limited-aware worker claims them.
    IF p_adopt AND p_cfg <> '{{}}'::jsonb THEN
        UPDATE {schema}.jobs AS j SET limit_key = ''
        WHERE j.state = 'available' AND j.limit_key IS NULL AND j.queue = ANY (p_queues)
          AND j.task = ANY (ARRAY(SELECT jsonb_object_keys(p_cfg)));
    END IF;
    -- The groups with waiting jobs, best first: (queue, task, partition) of jobs with a limit key,
    -- found by a skip scan of jobs_limited_idx (one probe per group, not one row per job); and one
    -- group per queue with limits for its other jobs (task NULL).
    FOR g IN
        SELECT c.gq, c.gt, c.gk FROM (
            SELECT q.name AS gq, grp.task AS gt, grp.limit_key AS gk, grp.priority AS pr, grp.scheduled_at AS sa
            FROM unnest(p_queues) AS q(name)
            CROSS JOIN LATERAL (
                WITH RECURSIVE grp AS (
                    (SELECT j.task, j.limit_key, j.priority, j.scheduled_at FROM {schema}.jobs AS j
                     WHERE j.state = 'available' AND j.limit_key IS NOT NULL AND j.queue = q.name
                     ORDER BY j.task, j.limit_key, j.priority DESC, j.scheduled_at, j.id LIMIT 1)
                    UNION ALL
                    SELECT n.task, n.limit_key, n.priority, n.scheduled_at FROM grp AS prev
                    CROSS JOIN LATERAL (
                        SELECT j.task, j.limit_key, j.priority, j.scheduled_at FROM {schema}.jobs AS j
                        WHERE j.state = 'available' AND j.limit_key IS NOT NULL AND j.queue = q.name
                          AND (j.task, j.limit_key) > (prev.task, prev.limit_key)
                        ORDER BY j.task, j.limit_key, j.priority DESC, j.scheduled_at, j.id LIMIT 1
                    ) AS n
                )
                SELECT * FROM grp
            ) AS grp
            UNION ALL
            SELECT l.name, NULL, NULL, f.priority, f.scheduled_at
            FROM {schema}.queues AS l
            CROSS JOIN LATERAL (
                SELECT j.priority, j.scheduled_at FROM {schema}.jobs AS j
                WHERE j.state = 'available' AND j.limit_key IS NULL AND j.queue = l.name
                ORDER BY j.priority DESC, j.scheduled_at, j.id LIMIT 1
            ) AS f
            WHERE l.name = ANY (p_queues) AND (l.max_concurrency IS NOT NULL OR l.rate_limit IS NOT NULL)
        ) AS c
        WHERE NOT EXISTS (SELECT 1 FROM {schema}.queues AS p WHERE p.name = c.gq AND p.paused)
        ORDER BY c.pr DESC, c.sa, c.gq, c.gt, c.gk
    LOOP
        room := p_limit - taken;
        cap := room;
        v_probe := false;
        cfg := p_cfg -> g.gt;
        -- A limited task this worker does not know the limits of: leave its jobs to one that does.
        CONTINUE WHEN g.gk IS NOT NULL AND cfg IS NULL;
        qc := NULL;
        qr := NULL;
        qp := NULL;
        SELECT l.max_concurrency, l.rate_limit, l.rate_period INTO qc, qr, qp
        FROM {schema}.queues AS l WHERE l.name = g.gq;
        IF qc IS NOT NULL THEN
            SELECT count(*) INTO n FROM {schema}.jobs AS j WHERE j.state = 'executing' AND j.queue = g.gq;
            cap := least(cap, qc - n);
        END IF;
        IF qr IS NOT NULL THEN
            SELECT * INTO v_room, v_wait FROM {schema}.nw_rate_room('q:' || g.gq, qr, qp, v_now);
            cap := least(cap, v_room);
            IF v_wait IS NOT NULL THEN
                v_wake := least(coalesce(v_wake, 'infinity'), v_wait);
            END IF;
        END IF;
        IF cfg IS NOT NULL AND cfg ? 'c' THEN
            SELECT count(*) INTO n FROM {schema}.jobs AS j
            WHERE j.state = 'executing' AND j.task = g.gt AND j.limit_key = coalesce(g.gk, '');
            cap := least(cap, (cfg ->> 'c')::integer - n);
        END IF;
        IF cfg IS NOT NULL AND cfg ? 'r' THEN
            SELECT * INTO v_room, v_wait
            FROM {schema}.nw_rate_room('t:' || g.gt || ':' || coalesce(g.gk, ''), (cfg ->> 'r')::integer,
                                       (cfg ->> 'p')::float8, v_now);
            cap := least(cap, v_room);
            IF v_wait IS NOT NULL THEN
                v_wake := least(coalesce(v_wake, 'infinity'), v_wait);
            END IF;
        END IF;
        IF cfg IS NOT NULL AND cfg ? 'b' AND cap > 0 THEN
            SELECT k.state, k.opened_at, k.cooldown, k.probe_job_id INTO b
            FROM {schema}.breakers AS k WHERE k.task = g.gt;
            IF FOUND AND b.state = 'open' THEN
                IF b.opened_at + b.cooldown * interval '1 second' > v_now THEN
                    cap := 0;
                    v_wake := least(coalesce(v_wake, 'infinity'),
                                    extract(epoch FROM b.opened_at + b.cooldown * interval '1 second' - v_now));
                    RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
                        NULL::integer, NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz,
                        NULL::timestamptz, NULL::jsonb, NULL::text, NULL::jsonb, NULL::timestamptz, NULL::text,
                        NULL::jsonb, NULL::jsonb, NULL::float8, 'breaker_open:' || g.gt;
                ELSE
                    v_probe := true;
                    cap := 1;
                END IF;
            ELSIF FOUND AND b.state = 'half_open' THEN
                IF EXISTS (SELECT 1 FROM {schema}.jobs AS j WHERE j.id = b.probe_job_id AND j.state = 'executing') THEN
                    cap := 0;
                ELSE
                    v_probe := true;
                    cap := 1;
                END IF;
            END IF;
        END IF;
        IF cap > 0 THEN
            IF g.gk IS NULL THEN
                RETURN QUERY
                WITH claimed AS (
                    UPDATE {schema}.jobs AS j
                    SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
                        worker_id = p_worker
                    WHERE j.id = ANY (ARRAY(
                        -- A queue's jobs without task limits (those of limited tasks wait to be adopted).
                        SELECT x.id FROM {schema}.jobs AS x
                        WHERE x.state = 'available' AND x.limit_key IS NULL AND x.queue = g.gq
                          AND x.task <> ALL (ARRAY(SELECT jsonb_object_keys(p_cfg)))
                        ORDER BY x.priority DESC, x.scheduled_at, x.id
                        LIMIT cap
                        FOR UPDATE SKIP LOCKED))
                    RETURNING j.id, j.task, j.queue, j.args, j.state, j.attempt, j.max_attempts, j.priority,
                              j.scheduled_at, j.inserted_at, j.attempted_at, j.finished_at, j.errors, j.worker_id,
                              j.result, j.cancel_requested_at, j.unique_key, j.retry_policy, j.trace_context
                )
                SELECT c.*, NULL::float8, NULL::text FROM claimed AS c;
            ELSE
                RETURN QUERY
                WITH claimed AS (
                    UPDATE {schema}.jobs AS j
                    SET state = 'executing', attempt = j.attempt + 1, attempted_at = clock_timestamp(),
                        worker_id = p_worker
                    WHERE j.id = ANY (ARRAY(
                        SELECT x.id FROM {schema}.jobs AS x
                        WHERE x.state = 'available' AND x.limit_key IS NOT NULL AND x.queue = g.gq
                          AND x.task = g.gt AND x.limit_key = g.gk
                        ORDER BY x.priority DESC, x.scheduled_at, x.id
                        LIMIT cap
                        FOR UPDATE SKIP LOCKED))
                    RETURNING j.id, j.task, j.queue, j.args, j.state, j.attempt, j.max_attempts, j.priority,
                              j.scheduled_at, j.inserted_at, j.attempted_at, j.finished_at, j.errors, j.worker_id,
                              j.result, j.cancel_requested_at, j.unique_key, j.retry_policy, j.trace_context
                )
                SELECT c.*, NULL::float8, NULL::text FROM claimed AS c;
            END IF;
            GET DIAGNOSTICS got = ROW_COUNT;
            IF got > 0 THEN
                taken := taken + got;
                -- The slots taken; and come back when the next one opens, in case more jobs wait.
                IF qr IS NOT NULL THEN
                    PERFORM {schema}.nw_rate_take('q:' || g.gq, qr, qp, v_now, got);
                    v_wake := least(coalesce(v_wake, 'infinity'), qp / qr * got);
                END IF;
                IF cfg IS NOT NULL AND cfg ? 'r' THEN
                    PERFORM {schema}.nw_rate_take('t:' || g.gt || ':' || coalesce(g.gk, ''), (cfg ->> 'r')::integer,
                                                  (cfg ->> 'p')::float8, v_now, got);
                    v_wake := least(coalesce(v_wake, 'infinity'), (cfg ->> 'p')::float8 / (cfg ->> 'r')::integer * got);
                END IF;
                IF v_probe THEN
                    SELECT j.id INTO v_probe_id FROM {schema}.jobs AS j
                    WHERE j.state = 'executing' AND j.task = g.gt AND j.worker_id = p_worker
                    ORDER BY j.attempted_at DESC LIMIT 1;
                    UPDATE {schema}.breakers AS k SET state = 'half_open', probe_job_id = v_probe_id, updated_at = now()
                    WHERE k.task = g.gt;
                END IF;
            END IF;
        END IF;
        EXIT WHEN taken >= p_limit;
    END LOOP;
    IF v_wake IS NOT NULL AND v_wake < 'infinity' THEN
        RETURN QUERY SELECT NULL::bigint, NULL::text, NULL::text, NULL::jsonb, NULL::text, NULL::integer,
            NULL::integer, NULL::integer, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz,
            NULL::timestamptz, NULL::jsonb, NULL::text, NULL::jsonb, NULL::timestamptz, NULL::text,
            NULL::jsonb, NULL::jsonb, greatest(v_wake, 0.001), NULL::text;
    END IF;
END
$$;
