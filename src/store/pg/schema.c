/* store/pg/schema: the migrations (append only), applied under an advisory lock. */
#include "store/pg/pg_int.h"
#include "core/err.h"
#include "core/log.h"

#include <stdio.h>
#include <stdlib.h>

#define MIGRATION_LOCK 727384611 /* pg_advisory_lock key: one migrator at a time */

/* Migration 8's update trigger, its journal in the given order (9 changes the order). */
#define TE_TASKS_UPDATED(order)                                                             \
    "CREATE OR REPLACE FUNCTION te_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$ " \
    "DECLARE os text; ns text; k bigint; m bigint; BEGIN " \
    " SELECT count(*), min(o.status), min(n.status), count(DISTINCT (o.status, n.status)) " \
    "  INTO k, os, ns, m FROM old_rows o JOIN new_rows n USING (seq) WHERE o.status <> n.status; " \
    " IF k = 0 THEN RETURN NULL; END IF; " \
    " IF m = 1 AND os < ns THEN " \
    "  UPDATE task_counts SET n = n - k WHERE status = os AND shard = pg_backend_pid() % 16; " \
    "  UPDATE task_counts SET n = n + k WHERE status = ns AND shard = pg_backend_pid() % 16; " \
    " ELSIF m = 1 THEN " \
    "  UPDATE task_counts SET n = n + k WHERE status = ns AND shard = pg_backend_pid() % 16; " \
    "  UPDATE task_counts SET n = n - k WHERE status = os AND shard = pg_backend_pid() % 16; " \
    " ELSE " \
    "  PERFORM te_count_add((SELECT jsonb_object_agg(s, c) FROM (SELECT s, sum(c) AS c FROM ( " \
    "   SELECT o.status AS s, -1 AS c FROM old_rows o JOIN new_rows n USING (seq) " \
    "    WHERE o.status <> n.status " \
    "   UNION ALL SELECT n.status, 1 FROM old_rows o JOIN new_rows n USING (seq) " \
    "    WHERE o.status <> n.status) y GROUP BY s) x)); " \
    " END IF; " \
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id, wait_us) " \
    "  SELECT te_us(n.updated_at), 'task', n.id, n.worker_id, n.status, n.problem_id, " \
    "  CASE WHEN n.status = 'running' THEN te_us(n.started_at) - te_us(n.created_at) END " \
    "  FROM old_rows o JOIN new_rows n USING (seq) WHERE o.status <> n.status ORDER BY " order "; " \
    " RETURN NULL; END $$;"

static const char *const migrations[] = {
    "CREATE FUNCTION te_ts(bigint) RETURNS timestamptz LANGUAGE sql IMMUTABLE AS "
    "$$ SELECT timestamptz 'epoch' + $1 * interval '1 microsecond' $$;"
    "CREATE FUNCTION te_us(timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS "
    "$$ SELECT (extract(epoch FROM $1) * 1000000)::bigint $$;"
    "CREATE TABLE tasks ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE,"
    " problem_id text NOT NULL,"
    " status text NOT NULL CHECK (status IN ('pending','running','completed','failed',"
    "  'timeout','cancelled')),"
    " priority integer NOT NULL DEFAULT 0,"
    " backend_type text NOT NULL,"
    " mode text NOT NULL DEFAULT 'batch',"
    " parameters jsonb NOT NULL,"
    " metadata jsonb NOT NULL,"
    " callback_url text,"
    " idempotency_key text UNIQUE,"
    " worker_id text,"
    " lease_token text,"
    " result jsonb,"
    " error text,"
    " max_steps integer NOT NULL,"
    " timeout_seconds integer NOT NULL,"
    " created_at timestamptz NOT NULL,"
    " updated_at timestamptz NOT NULL,"
    " started_at timestamptz,"
    " completed_at timestamptz,"
    " deadline_at timestamptz,"
    " CHECK (status <> 'running' OR worker_id IS NOT NULL));"
    /* Narrow on purpose: only pending rows, in claim order. */
    "CREATE INDEX tasks_claim ON tasks (backend_type, priority DESC, seq) "
    " WHERE status = 'pending';"
    "CREATE INDEX tasks_running ON tasks (worker_id) WHERE status = 'running';"
    "CREATE INDEX tasks_deadline ON tasks (deadline_at) WHERE status = 'running';"
    "CREATE INDEX tasks_status_seq ON tasks (status, seq);"
    "CREATE INDEX tasks_problem_seq ON tasks (problem_id, seq);"
    "CREATE INDEX tasks_worker_seq ON tasks (worker_id, seq);"
    "CREATE INDEX tasks_created ON tasks (created_at);"
    "CREATE TABLE task_logs ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " task_id uuid NOT NULL,"
    " ts timestamptz NOT NULL,"
    " level smallint NOT NULL,"
    " message text NOT NULL,"
    " context jsonb NOT NULL);"
    "CREATE INDEX task_logs_task ON task_logs (task_id, id);"
    "CREATE TABLE llm_conversations ("
    " seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE,"
    " task_id uuid NOT NULL,"
    " session_id text NOT NULL,"
    " model_name text,"
    " model_config jsonb NOT NULL DEFAULT '{}',"
    " started_at timestamptz NOT NULL,"
    " ended_at timestamptz,"
    " total_messages integer NOT NULL DEFAULT 0,"
    " total_tokens bigint,"
    " metadata jsonb NOT NULL DEFAULT '{}',"
    " UNIQUE (task_id, session_id));"
    "CREATE INDEX llm_conversations_started ON llm_conversations (started_at);"
    "CREATE TABLE llm_messages ("
    " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " conversation_seq bigint NOT NULL,"
    " ts timestamptz NOT NULL,"
    " role text NOT NULL,"
    " content jsonb NOT NULL,"
    " step integer,"
    " metadata jsonb NOT NULL);"
    "CREATE INDEX llm_messages_conv ON llm_messages (conversation_seq, id);"
    "CREATE TABLE workers ("
    " id text PRIMARY KEY,"
    " backend_type text NOT NULL,"
    " status text NOT NULL CHECK (status IN ('idle','busy','offline')),"
    " last_heartbeat timestamptz NOT NULL,"
    " current_task_id uuid,"
    " capabilities jsonb NOT NULL DEFAULT '{}',"
    " metadata jsonb NOT NULL DEFAULT '{}',"
    " tasks_completed integer NOT NULL DEFAULT 0,"
    " tasks_failed integer NOT NULL DEFAULT 0,"
    " registered_at timestamptz NOT NULL,"
    " token_hash text,"
    " name_prefix text);",
    /* 2: webhook deliveries, made due by a trigger on every terminal transition */
    "ALTER TABLE tasks ADD COLUMN webhook_state text,"
    " ADD COLUMN webhook_attempts integer NOT NULL DEFAULT 0,"
    " ADD COLUMN webhook_next_at timestamptz, ADD COLUMN webhook_error text;"
    "CREATE INDEX tasks_webhooks_due ON tasks (webhook_next_at) WHERE webhook_state = 'pending';"
    "CREATE FUNCTION te_webhook_due() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NEW.callback_url IS NOT NULL"
    "  AND NEW.status IN ('completed','failed','timeout','cancelled')"
    "  AND OLD.status IN ('pending','running') THEN"
    "  NEW.webhook_state := 'pending'; NEW.webhook_next_at := NEW.updated_at;"
    " END IF; RETURN NEW; END $$;"
    "CREATE TRIGGER tasks_webhook BEFORE UPDATE OF status ON tasks FOR EACH ROW"
    " EXECUTE FUNCTION te_webhook_due();",
    /* 3: tasks per state, kept by a trigger in 16 shards per state (so concurrent
     * transitions rarely wait on one row), so totals and stats never count the table */
    "LOCK TABLE tasks IN SHARE ROW EXCLUSIVE MODE;"
    "CREATE TABLE task_counts (status text NOT NULL, shard integer NOT NULL,"
    " n bigint NOT NULL DEFAULT 0, PRIMARY KEY (status, shard));"
    "INSERT INTO task_counts SELECT s, g, 0 FROM unnest(ARRAY['pending', 'running', "
    "'completed', 'failed', 'timeout', 'cancelled']) s, generate_series(0, 15) g;"
    "UPDATE task_counts c SET n = x.cnt FROM (SELECT status, count(*) AS cnt FROM tasks "
    "GROUP BY status) x WHERE c.status = x.status AND c.shard = 0;"
    "CREATE FUNCTION te_count() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'INSERT' THEN"
    "  UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = NEW.seq % 16;"
    " ELSIF OLD.status <> NEW.status THEN"
    "  UPDATE task_counts SET n = n - 1 WHERE status = OLD.status AND shard = NEW.seq % 16;"
    "  UPDATE task_counts SET n = n + 1 WHERE status = NEW.status AND shard = NEW.seq % 16;"
    " END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER tasks_count AFTER INSERT OR UPDATE OF status ON tasks FOR EACH ROW"
    " EXECUTE FUNCTION te_count();",
    /* 4: an event journal for live streams (SSE) and the dashboard's charts, written by
     * triggers so every server sees every change (ts in microseconds); pruned by age.
     * The per-state counts move to statement-level triggers: a row trigger updated the
     * same counter rows once per row, which made one statement touching many tasks
     * quadratic (1,000,000 inserted tasks did not finish in 12 minutes). Counters are
     * updated in status order, so two statements never lock them in opposite orders. */
    "CREATE TABLE task_events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " ts bigint NOT NULL, kind text NOT NULL, task_id uuid, worker_id text, status text,"
    " problem_id text, wait_us bigint);"
    "CREATE INDEX task_events_ts ON task_events (ts);"
    "DROP TRIGGER tasks_count ON tasks; DROP FUNCTION te_count();"
    "CREATE FUNCTION te_count_add(deltas jsonb) RETURNS void LANGUAGE plpgsql AS $$"
    " DECLARE r record; BEGIN"
    " FOR r IN SELECT key, value::bigint AS k FROM jsonb_each_text(deltas) ORDER BY key LOOP"
    "  IF r.k <> 0 THEN UPDATE task_counts SET n = n + r.k"
    "   WHERE status = r.key AND shard = pg_backend_pid() % 16; END IF;"
    " END LOOP; END $$;"
    "CREATE FUNCTION te_tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " PERFORM te_count_add((SELECT jsonb_object_agg(status, k) FROM"
    "  (SELECT status, count(*) AS k FROM new_rows GROUP BY status) x));"
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id)"
    "  SELECT te_us(updated_at), 'task', id, worker_id, status, problem_id FROM new_rows"
    "  ORDER BY seq;"
    " RETURN NULL; END $$;"
    "CREATE FUNCTION te_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF NOT EXISTS (SELECT 1 FROM old_rows o JOIN new_rows n USING (seq)"
    "  WHERE o.status <> n.status) THEN RETURN NULL; END IF;"
    " PERFORM te_count_add((SELECT jsonb_object_agg(s, k) FROM (SELECT s, sum(k) AS k FROM ("
    "  SELECT o.status AS s, -1 AS k FROM old_rows o JOIN new_rows n USING (seq)"
    "   WHERE o.status <> n.status"
    "  UNION ALL SELECT n.status, 1 FROM old_rows o JOIN new_rows n USING (seq)"
    "   WHERE o.status <> n.status) y GROUP BY s) x));"
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id, wait_us)"
    "  SELECT te_us(n.updated_at), 'task', n.id, n.worker_id, n.status, n.problem_id,"
    "  CASE WHEN n.status = 'running' THEN te_us(n.started_at) - te_us(n.created_at) END"
    "  FROM old_rows o JOIN new_rows n USING (seq) WHERE o.status <> n.status ORDER BY n.seq;"
    " RETURN NULL; END $$;"
    "CREATE TRIGGER tasks_inserted AFTER INSERT ON tasks REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION te_tasks_inserted();"
    "CREATE TRIGGER tasks_updated AFTER UPDATE ON tasks"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION te_tasks_updated();"
    "CREATE FUNCTION te_worker_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
    " IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status"
    "  OR OLD.current_task_id IS DISTINCT FROM NEW.current_task_id THEN"
    "  INSERT INTO task_events (ts, kind, task_id, worker_id, status)"
    "  VALUES (te_us(clock_timestamp()), 'worker', NEW.current_task_id, NEW.id, NEW.status);"
    " END IF; RETURN NULL; END $$;"
    "CREATE TRIGGER workers_event AFTER INSERT OR UPDATE ON workers FOR EACH ROW"
    " EXECUTE FUNCTION te_worker_event();",
    /* 5: interactive sessions: the step in flight and the last answer of each */
    "CREATE TABLE sessions (task_id uuid PRIMARY KEY, state text NOT NULL,"
    " task_description text, instructions text, actions jsonb, max_steps integer NOT NULL,"
    " step integer NOT NULL DEFAULT 0, answered integer NOT NULL DEFAULT 0, action text,"
    " observation text, done boolean NOT NULL DEFAULT false, reward double precision,"
    " results jsonb, last_activity_at bigint NOT NULL);",
    /* 6: retries (attempts, their classes, a back-off before the next) and experiments
     * (problems x agent configs x attempts; each slot's current task) */
    "ALTER TABLE tasks ADD COLUMN max_retries integer NOT NULL DEFAULT 0,"
    " ADD COLUMN attempt integer NOT NULL DEFAULT 1, ADD COLUMN error_class text,"
    " ADD COLUMN attempts jsonb NOT NULL DEFAULT '[]', ADD COLUMN retry_at timestamptz,"
    " ADD COLUMN avoid_worker text, ADD COLUMN avoid_until timestamptz,"
    " ADD COLUMN experiment_id uuid, ADD COLUMN slot jsonb,"
    " ADD COLUMN slot_current boolean NOT NULL DEFAULT true;"
    "CREATE INDEX tasks_experiment ON tasks (experiment_id, seq) WHERE experiment_id IS NOT NULL"
    " AND slot_current;"
    "ALTER TABLE task_logs ADD COLUMN attempt integer NOT NULL DEFAULT 1;"
    "ALTER TABLE llm_conversations ADD COLUMN attempt integer NOT NULL DEFAULT 1,"
    " DROP CONSTRAINT llm_conversations_task_id_session_id_key,"
    " ADD UNIQUE (task_id, session_id, attempt);"
    "CREATE TABLE experiments (id uuid PRIMARY KEY, name text NOT NULL, spec jsonb NOT NULL,"
    " metadata jsonb NOT NULL, callback_url text, created_at timestamptz NOT NULL,"
    " cancelled_at timestamptz, ended_at timestamptz, seq bigint GENERATED ALWAYS AS IDENTITY,"
    " webhook_state text, webhook_attempts integer NOT NULL DEFAULT 0,"
    " webhook_next_at timestamptz, webhook_error text);"
    "CREATE INDEX experiments_seq ON experiments (seq);"
    "CREATE INDEX experiments_open ON experiments (seq) WHERE ended_at IS NULL;"
    "ALTER TABLE task_events ADD COLUMN experiment_id uuid;",
    /* 7: the LLM gateway's calls: the request and answer as json, not jsonb (kept as sent,
     * and a model may emit \u0000, which jsonb refuses), a few columns read out of them */
    "CREATE TABLE llm_calls (seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " id uuid NOT NULL UNIQUE, task_id uuid NOT NULL, attempt integer NOT NULL,"
    " started_at timestamptz NOT NULL, latency_ms double precision NOT NULL,"
    " first_byte_ms double precision, status integer NOT NULL, stream boolean NOT NULL,"
    " cut boolean NOT NULL, upstream text, model text, finish_reason text,"
    " prompt_tokens bigint, completion_tokens bigint, error text, request json NOT NULL,"
    " response json);"
    "CREATE INDEX llm_calls_task ON llm_calls (task_id, seq);",
    /* 8: the transition triggers' common case, one status in and one transition out per
     * statement (a submit, a claim, a finish), as plain UPDATEs of the one or two counter
     * rows, in status order as before; jsonb and the counting loop only for statements
     * that mix states. The write path's cost on PostgreSQL was mostly these (#17). */
    "CREATE OR REPLACE FUNCTION te_tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "DECLARE s text; k bigint; m bigint; BEGIN "
    " SELECT min(status), count(*), count(DISTINCT status) INTO s, k, m FROM new_rows; "
    " IF m = 1 THEN "
    "  UPDATE task_counts SET n = n + k WHERE status = s AND shard = pg_backend_pid() % 16; "
    " ELSIF m > 1 THEN "
    "  PERFORM te_count_add((SELECT jsonb_object_agg(status, c) FROM "
    "   (SELECT status, count(*) AS c FROM new_rows GROUP BY status) x)); "
    " END IF; "
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id) "
    "  SELECT te_us(updated_at), 'task', id, worker_id, status, problem_id FROM new_rows ORDER BY seq; "
    " RETURN NULL; END $$; "
    TE_TASKS_UPDATED("n.seq"),
    /* 9 (#17): fewer index entries per write. A change of status cannot be a HOT update,
     * so every claim and finish writes a new entry in each index whose predicate the row
     * meets: 9 for a claim, 7 for a finish, 8 for an insert. Running tasks are few (one
     * per worker), so the reaper and recovery find them through tasks_status_seq; the
     * created_at range of a list is served by seq order. Now 6, 6 and 7. Only drops, so
     * the migration holds the table for an instant, and servers of the previous version
     * on the same database keep working (the idempotency key's full unique constraint
     * stays for their ON CONFLICT; making it and tasks_worker_seq partial is for a
     * later migration). te_ts and te_us are STABLE, as their bodies are (timestamptz
     * arithmetic): declared IMMUTABLE they were never inlined, so each call ran as a SQL
     * function, parsed anew in every statement (a fifth of the database's time draining
     * a queue). The journal of a statement that ends one task and claims another (an
     * internal worker's) lists the end first. */
    "ALTER FUNCTION te_ts(bigint) STABLE; ALTER FUNCTION te_us(timestamptz) STABLE;"
    "DROP INDEX tasks_running; DROP INDEX tasks_deadline; DROP INDEX tasks_created;"
    TE_TASKS_UPDATED("(n.status = 'running'), n.seq"),
    /* 10 (#17): the update trigger in one pass over its transitions. An internal worker's
     * end-and-claim statement mixes two transitions (running -> an end, pending ->
     * running), which took the jsonb path of migration 8 (a tenth of that statement's
     * time draining a queue: the first count, a jsonb built and read back, a function
     * call). Now each status's net change is summed in one join and only the counters
     * that move are updated, in status order as before; a group whose claims match its
     * ends leaves 'running' untouched. */
    "CREATE OR REPLACE FUNCTION te_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "DECLARE r record; moved boolean := false; BEGIN "
    " FOR r IN SELECT v.s, sum(v.c) AS c FROM old_rows o JOIN new_rows n USING (seq) "
    "  CROSS JOIN LATERAL (VALUES (o.status, -1), (n.status, 1)) v(s, c) "
    "  WHERE o.status <> n.status GROUP BY v.s ORDER BY v.s LOOP "
    "  moved := true; "
    "  IF r.c <> 0 THEN "
    "   UPDATE task_counts SET n = n + r.c WHERE status = r.s AND shard = pg_backend_pid() % 16; "
    "  END IF; "
    " END LOOP; "
    " IF NOT moved THEN RETURN NULL; END IF; "
    " INSERT INTO task_events (ts, kind, task_id, worker_id, status, problem_id, wait_us) "
    "  SELECT te_us(n.updated_at), 'task', n.id, n.worker_id, n.status, n.problem_id, "
    "  CASE WHEN n.status = 'running' THEN te_us(n.started_at) - te_us(n.created_at) END "
    "  FROM old_rows o JOIN new_rows n USING (seq) WHERE o.status <> n.status "
    "  ORDER BY (n.status = 'running'), n.seq; "
    " RETURN NULL; END $$;",
};

#define N_MIGRATIONS (int)(sizeof(migrations) / sizeof(migrations[0]))

/* Applies pending migrations under an advisory lock, so servers starting together
 * migrate once. */
int pg_migrate(PGconn *c)
{
    PGresult *r;
    int version, rc;
    char sql[160];

    snprintf(sql, sizeof(sql), "SELECT pg_advisory_lock(%d)", MIGRATION_LOCK);
    rc = pg_exec_simple(c, sql);
    if (rc < 0)
        return rc;
    rc = pg_exec_simple(c, "SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS "
                        "schema_migrations (version integer PRIMARY KEY, applied_at "
                        "timestamptz NOT NULL DEFAULT now())");
    if (rc < 0)
        goto out;
    r = PQexec(c, "SELECT COALESCE(max(version), 0) FROM schema_migrations");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        log_error("postgresql: %s", PQresultErrorMessage(r));
        PQclear(r);
        rc = ERR_STORE;
        goto out;
    }
    version = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    if (version > N_MIGRATIONS) {
        log_error("postgresql: the database has schema version %d, newer than this build (%d)",
                  version, N_MIGRATIONS);
        rc = ERR_STORE;
        goto out;
    }
    for (int v = version; v < N_MIGRATIONS && rc == 0; v++) {
        rc = pg_exec_simple(c, "BEGIN");
        if (rc == 0)
            rc = pg_exec_simple(c, migrations[v]);
        if (rc == 0) {
            snprintf(sql, sizeof(sql), "INSERT INTO schema_migrations (version) VALUES (%d)",
                     v + 1);
            rc = pg_exec_simple(c, sql);
        }
        if (rc == 0)
            rc = pg_exec_simple(c, "COMMIT");
        else
            pg_exec_simple(c, "ROLLBACK");
        if (rc == 0)
            log_info("postgresql: applied migration %d", v + 1);
    }
out:
    snprintf(sql, sizeof(sql), "SELECT pg_advisory_unlock(%d)", MIGRATION_LOCK);
    pg_exec_simple(c, sql);
    return rc;
}
