-- Pending jobs are claimed through a small table of their own, job_ready, kept by
-- triggers on jobs, instead of a partial index of jobs.
--
-- Every claim reads its index from the oldest entry, and the entries of jobs already
-- claimed stay in it until a VACUUM removes them, so the index must be vacuumed every few
-- thousand claims. A VACUUM cannot clean one index of a table: on jobs it also scanned
-- every other index, whose size grows with the history of finished jobs kept (a day by
-- default). The passes got longer as the table grew, and throughput fell with it.
-- job_ready holds only pending jobs: vacuuming it costs milliseconds however large the
-- history, and jobs itself needs vacuum about as often as autovacuum's defaults say.
--
-- Triggers on jobs keep it: every way a job enters or leaves `pending` (a create, a retry,
-- a staged delay, an operator's UPDATE) goes through them, except a claim, which removes
-- its own rows. They run as the table's owner, so a role allowed to write jobs needs no grant
-- here. A claim still decides on the jobs row: job_ready only orders the candidates.
CREATE TABLE IF NOT EXISTS job_ready (
    queue varchar(100) NOT NULL,
    suspect boolean NOT NULL,
    priority integer NOT NULL,
    run_at timestamptz NOT NULL,
    id uuid NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
-- The one index: claims read it in claim order (suspects apart), and a row is found by
-- all of its columns, so the table needs no key of its own (one index fewer to write per
-- job). A publication of all tables still replicates its deletes.
CREATE INDEX IF NOT EXISTS job_ready_claim_idx ON job_ready (queue, suspect, priority, run_at, id);
ALTER TABLE job_ready REPLICA IDENTITY FULL;

CREATE OR REPLACE FUNCTION pgjobs_ready_inserted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO job_ready (queue, suspect, priority, run_at, id)
    SELECT n.queue, n.suspect, n.priority, n.run_at, n.id FROM ready_new n
    WHERE n.status = 'pending';
    RETURN NULL;
END $$;

-- A row that left `pending`, or whose claim order changed while pending, leaves by its
-- old values; a row that is pending now enters with its new ones.
CREATE OR REPLACE FUNCTION pgjobs_ready_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.status = 'pending' THEN
        DELETE FROM job_ready r
        WHERE r.queue = OLD.queue AND r.suspect = OLD.suspect AND r.priority = OLD.priority
          AND r.run_at = OLD.run_at AND r.id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.status = 'pending' THEN
        INSERT INTO job_ready (queue, suspect, priority, run_at, id)
        VALUES (NEW.queue, NEW.suspect, NEW.priority, NEW.run_at, NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pgjobs_ready_truncated() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    TRUNCATE job_ready;
    RETURN NULL;
END $$;

-- Inserts are handled per statement (a COPY of 20,000 jobs adds their rows in one INSERT
-- ... SELECT); updates and deletes per row, and only rows whose place in job_ready
-- changes: the WHEN test costs no function call, so a finished run's update or a
-- progress report pays nothing here. A claim (pending to active) removes its rows
-- itself, in the claim's statement (claim_picked): a row whose job was made active any
-- other way is left behind, never claimed (the claim checks the jobs row), and removed
-- by the maintenance sweep.
-- ALWAYS: the triggers also fire where session_replication_role is `replica` (a logical
-- replication apply, some restore tools), so job_ready never misses a pending job.
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY['pgjobs_ready_inserted()', 'pgjobs_ready_changed()',
                             'pgjobs_ready_truncated()'] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', f,
                       current_schema());
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'jobs_ready_insert'
                   AND tgrelid = 'jobs'::regclass) THEN
        CREATE TRIGGER jobs_ready_insert AFTER INSERT ON jobs
            REFERENCING NEW TABLE AS ready_new
            FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_ready_inserted();
        CREATE TRIGGER jobs_ready_update AFTER UPDATE ON jobs FOR EACH ROW
            WHEN ((OLD.status = 'pending' OR NEW.status = 'pending') AND NEW.status <> 'active'
                  AND (OLD.status, OLD.queue, OLD.suspect, OLD.priority, OLD.run_at, OLD.id)
                      IS DISTINCT FROM
                      (NEW.status, NEW.queue, NEW.suspect, NEW.priority, NEW.run_at, NEW.id))
            EXECUTE FUNCTION pgjobs_ready_changed();
        CREATE TRIGGER jobs_ready_delete AFTER DELETE ON jobs FOR EACH ROW
            WHEN (OLD.status = 'pending')
            EXECUTE FUNCTION pgjobs_ready_changed();
        CREATE TRIGGER jobs_ready_truncate AFTER TRUNCATE ON jobs
            FOR EACH STATEMENT EXECUTE FUNCTION pgjobs_ready_truncated();
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_insert;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_update;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_delete;
        ALTER TABLE jobs ENABLE ALWAYS TRIGGER jobs_ready_truncate;
    END IF;
END $$;

-- The jobs pending now, then the old indexes go.
INSERT INTO job_ready (queue, suspect, priority, run_at, id)
SELECT queue, suspect, priority, run_at, id FROM jobs WHERE status = 'pending';
DROP INDEX IF EXISTS jobs_claim_idx;
DROP INDEX IF EXISTS jobs_suspect_idx;

-- jobs is vacuumed for its heap and history indexes only: autovacuum's usual pace.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.1, autovacuum_vacuum_threshold = 20000);
