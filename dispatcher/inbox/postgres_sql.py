"""The SQL of the PostgreSQL inbox: its schema migrations and its longer statements.

``{s}`` stands for the quoted schema name (``PostgresStore._sql`` fills it in). Times are
parameters in the store clock's epoch seconds, never ``now()``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

# Index i takes the schema from version i to i + 1.
MIGRATIONS: list[list[str]] = [
    [
        """CREATE TABLE {s}.deliveries (
            id text PRIMARY KEY,
            webhook text NOT NULL,
            event text,
            idempotency_key text,
            body bytea NOT NULL,
            headers jsonb NOT NULL,
            query text NOT NULL,
            received_at double precision NOT NULL,
            status text NOT NULL,
            series integer NOT NULL DEFAULT 0
        )""",
        """CREATE UNIQUE INDEX deliveries_idempotency ON {s}.deliveries
            (webhook, idempotency_key) WHERE idempotency_key IS NOT NULL""",
        "CREATE INDEX deliveries_status ON {s}.deliveries (status, received_at)",
        "CREATE INDEX deliveries_webhook ON {s}.deliveries (webhook, received_at)",
        "CREATE INDEX deliveries_received ON {s}.deliveries (received_at)",
        """CREATE TABLE {s}.tasks (
            id bigserial PRIMARY KEY,
            delivery_id text NOT NULL REFERENCES {s}.deliveries (id) ON DELETE CASCADE,
            handler text NOT NULL,
            status text NOT NULL,
            due_at double precision NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            series integer NOT NULL DEFAULT 0,
            lease_token text,
            lease_until double precision,
            worker text,
            last_error text
        )""",
        "CREATE INDEX tasks_delivery ON {s}.tasks (delivery_id)",
        "CREATE INDEX tasks_due ON {s}.tasks (due_at, id) WHERE status = 'pending'",
        "CREATE INDEX tasks_lease ON {s}.tasks (lease_until, id) WHERE status = 'leased'",
        """CREATE TABLE {s}.attempts (
            id bigserial PRIMARY KEY,
            task_id bigint NOT NULL REFERENCES {s}.tasks (id) ON DELETE CASCADE,
            delivery_id text NOT NULL,
            handler text NOT NULL,
            series integer NOT NULL,
            attempt integer NOT NULL,
            worker text NOT NULL,
            started_at double precision NOT NULL,
            finished_at double precision,
            error text
        )""",
        "CREATE UNIQUE INDEX attempts_task ON {s}.attempts (task_id, series, attempt)",
        "CREATE INDEX attempts_delivery ON {s}.attempts (delivery_id)",
    ],
]

# A batch of deliveries in one statement, so one round trip and (run outside an explicit
# transaction) one commit. The deliveries arrive in the order the caller sorted them, and
# are inserted in that order (ORDER BY n): two receivers inserting the same idempotency
# keys then wait on each other in the same order and cannot deadlock. A repeated key,
# within the batch or against a stored row (even one being inserted by another
# transaction, which the unique index waits for), is skipped; RETURNING names the rows
# inserted, and only their tasks are inserted. A task given a lease token is claimed as
# it is stored (add_and_claim): leased to its worker until its lease ends, with its first
# attempt started. One NOTIFY wakes the workers, and only when a task was left pending.
#
# The rows come as one JSON array each ($1: the deliveries, each with the length of its
# body; $3: the tasks), and the bodies as one bytea ($2: all of them one after another,
# in the same order), not as an array per column: asyncpg checks every element of an
# array argument against collections.abc.Iterable and Sized, a Python-level call each,
# which cost the receiver ~3 us per delivery (~15% of a queued request's CPU in process)
# for 15 columns, and still ~12 bytecodes a delivery for the bodies alone as a bytea[].
ADD_BATCH = """
WITH rows AS (
    SELECT r.v->>0 AS id, r.v->>1 AS webhook, r.v->>2 AS event, r.v->>3 AS idempotency_key,
        substring($2::bytea FROM (r.ends - r.size + 1)::int FOR r.size) AS body,
        r.v->4 AS headers, r.v->>5 AS query, (r.v->>6)::float8 AS received_at,
        r.v->>7 AS status, r.n
    FROM (
        SELECT e.v, e.n, (e.v->>8)::int AS size, sum((e.v->>8)::int) OVER (ORDER BY e.n) AS ends
        FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(v, n)
    ) AS r
), inserted AS (
    INSERT INTO {s}.deliveries (id, webhook, event, idempotency_key, body, headers, query,
        received_at, status)
    SELECT id, webhook, event, idempotency_key, body, headers, query, received_at, status
    FROM rows ORDER BY n
    ON CONFLICT (webhook, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id
), task_rows AS (
    SELECT t.v->>0 AS delivery_id, t.v->>1 AS handler, (t.v->>2)::float8 AS due_at,
        t.v->>3 AS lease_token, t.v->>4 AS worker, (t.v->>5)::float8 AS lease_until, t.n
    FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS t(v, n)
), tasks AS (
    INSERT INTO {s}.tasks (delivery_id, handler, status, due_at, attempt, lease_token,
        lease_until, worker)
    SELECT t.delivery_id, t.handler,
        CASE WHEN t.lease_token IS NULL THEN 'pending' ELSE 'leased' END, t.due_at,
        CASE WHEN t.lease_token IS NULL THEN 0 ELSE 1 END, t.lease_token, t.lease_until,
        t.worker
    FROM task_rows t
    WHERE t.delivery_id IN (SELECT id FROM inserted)
    ORDER BY t.n
    RETURNING id, delivery_id, handler, status, due_at, lease_token, worker
), started AS (
    INSERT INTO {s}.attempts (task_id, delivery_id, handler, series, attempt, worker,
        started_at)
    SELECT id, delivery_id, handler, 0, 1, worker, due_at FROM tasks
    WHERE lease_token IS NOT NULL ORDER BY id
)
SELECT array(SELECT id FROM inserted) AS stored,
    array(SELECT id FROM tasks WHERE lease_token IS NOT NULL ORDER BY id) AS claimed_ids,
    array(SELECT lease_token FROM tasks WHERE lease_token IS NOT NULL ORDER BY id)
        AS claimed_tokens,
    (SELECT count(*) FROM (SELECT pg_notify($4, '') FROM tasks WHERE status = 'pending'
        LIMIT 1) AS n) AS notified
"""

# The outcomes of a batch of tasks (at most one per task), in one statement: one round
# trip, one commit. Each task is updated only if its caller still holds the lease
# (fencing); then its attempt row and its delivery's status.
#
# The delivery status depends on sibling tasks, which another worker may be finishing at
# the same moment; computed from this statement's snapshot it could miss that worker's
# outcome and leave a finished delivery "pending". So "locked" first locks every task of
# the deliveries concerned, by delivery ($2 comes sorted) and then by id: two finishers
# take the locks in the same order and cannot deadlock. FOR UPDATE waits for a sibling's
# finisher to commit and returns the row as committed, not as in the snapshot. "finished"
# only updates rows joined from "locked", so it never takes a lock "locked" has not
# taken first. Sibling CTEs do not see each other's updates, so the status combines the
# new status of the tasks finished here (from RETURNING) with the locked status of the
# rest.
#
# Plans: asyncpg prepares each statement once per connection and PostgreSQL soon reuses
# one generic plan, made while the tables may still be small (a new inbox; autovacuum
# has not analyzed them yet). "locked" is a LATERAL lookup per delivery because then
# that plan can only use the tasks_delivery index; a plain "delivery_id = ANY($2)" gets
# a sequential scan of all tasks, kept for good as the table grows. For the same reason
# the status test is on the locked row, not on t: there it would match the tasks_lease
# partial index, and the plan could scan that index whole per outcome. The outcomes come
# as one JSON array, as ADD_BATCH's rows do, and for the same reason.
FINISH_BATCH = """
WITH outcome AS (
    SELECT (o.v->>0)::bigint AS task_id, o.v->>1 AS lease_token, o.v->>2 AS status,
        o.v->>3 AS error, (o.v->>4)::float8 AS retry_at, (o.v->>5)::int AS series,
        (o.v->>6)::int AS attempt, (o.v->>7)::float8 AS finished_at
    FROM jsonb_array_elements($1::jsonb) AS o(v)
), locked AS (
    SELECT t.* FROM unnest($2::text[]) AS d(id), LATERAL (
        SELECT id, delivery_id, status FROM {s}.tasks WHERE delivery_id = d.id
        ORDER BY id FOR UPDATE
    ) AS t
), finished AS (
    UPDATE {s}.tasks t SET status = o.status, lease_token = NULL, lease_until = NULL,
        due_at = coalesce(o.retry_at, t.due_at), last_error = coalesce(o.error, t.last_error)
    FROM outcome o JOIN locked l ON l.id = o.task_id
    WHERE t.id = l.id AND l.status = 'leased' AND t.lease_token = o.lease_token
    RETURNING t.id, t.delivery_id, t.status
), attempts AS (
    UPDATE {s}.attempts a SET finished_at = o.finished_at, error = o.error
    FROM finished f JOIN outcome o ON o.task_id = f.id
    WHERE a.task_id = f.id AND a.series = o.series AND a.attempt = o.attempt
), statuses AS (
    SELECT delivery_id, CASE
        WHEN bool_or(status IN ('pending', 'leased')) THEN 'pending'
        WHEN bool_or(status = 'dead') THEN 'dead'
        ELSE 'done' END AS status
    FROM (
        SELECT delivery_id, status FROM finished
        UNION ALL
        SELECT delivery_id, status FROM locked WHERE id NOT IN (SELECT id FROM finished)
    ) AS current
    WHERE delivery_id IN (SELECT delivery_id FROM finished)
    GROUP BY delivery_id
), deliveries AS (
    UPDATE {s}.deliveries d SET status = st.status
    FROM statuses st WHERE d.id = st.delivery_id AND d.status <> st.status
)
SELECT array(SELECT id FROM finished) AS finished,
    (SELECT count(*) FROM (SELECT pg_notify($3, '') FROM finished
        WHERE status = 'pending' LIMIT 1) AS n) AS notified,
    CASE WHEN $4 THEN set_config('synchronous_commit', 'off', true) END AS relaxed
"""

# One statement, so one round trip and one commit per claim. The locking CTEs return the
# row versions they locked (FOR UPDATE re-reads a row changed since the snapshot), so the
# old series/attempt of a lapsed lease are current: that attempt is closed with $5 (it
# never finished), and a new attempt row is started for every task claimed, in claim
# order so attempt ids follow it.
CLAIM = """
WITH due AS (
    SELECT id, due_at AS k, status, series, attempt FROM {s}.tasks
    WHERE status = 'pending' AND due_at <= $1
    ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED
), lapsed AS (
    SELECT id, lease_until AS k, status, series, attempt FROM {s}.tasks
    WHERE status = 'leased' AND lease_until < $1
    ORDER BY lease_until, id LIMIT $2 FOR UPDATE SKIP LOCKED
), picked AS (
    SELECT * FROM (SELECT * FROM due UNION ALL SELECT * FROM lapsed) AS u
    ORDER BY k, id LIMIT $2
), claimed AS (
    UPDATE {s}.tasks t SET status = 'leased', attempt = t.attempt + 1,
        lease_token = md5(random()::text || clock_timestamp()::text || t.id::text),
        lease_until = $1 + $3, worker = $4
    FROM picked p, {s}.deliveries d
    WHERE t.id = p.id AND d.id = t.delivery_id
    RETURNING t.id, t.delivery_id, t.handler, t.attempt, t.series, t.lease_token, d.webhook,
        d.event, d.body, d.headers::text AS headers, d.query, d.received_at, p.k,
        p.status AS old_status, p.series AS old_series, p.attempt AS old_attempt
), closed AS (
    UPDATE {s}.attempts a SET finished_at = $1, error = $5
    FROM claimed c
    WHERE c.old_status = 'leased' AND a.task_id = c.id AND a.series = c.old_series
        AND a.attempt = c.old_attempt AND a.finished_at IS NULL
), started AS (
    INSERT INTO {s}.attempts (task_id, delivery_id, handler, series, attempt, worker,
        started_at)
    SELECT id, delivery_id, handler, series, attempt, $4, $1 FROM claimed ORDER BY k, id
)
SELECT * FROM claimed ORDER BY k, id
"""

SUMMARY = """
SELECT d.id, d.webhook, d.event, d.status, d.received_at,
    (SELECT count(*) FROM {s}.attempts a WHERE a.delivery_id = d.id) AS attempts,
    (SELECT a.error FROM {s}.attempts a WHERE a.delivery_id = d.id AND a.error IS NOT NULL
        ORDER BY a.finished_at DESC NULLS LAST, a.id DESC LIMIT 1) AS last_error
FROM {s}.deliveries d
"""
