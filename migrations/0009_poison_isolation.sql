-- A job taken back from a worker that died is a suspect: any job in flight there may
-- have killed it. Suspects are claimed one at a time by a worker that runs nothing else
-- (claim_suspect), so the job that really kills workers is the one charged a stall and
-- its neighbours are not. The ordinary claim skips suspects: its partial index leaves
-- them out, and they get a small index of their own.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS suspect boolean NOT NULL DEFAULT false;
DROP INDEX IF EXISTS jobs_claim_idx;
CREATE INDEX IF NOT EXISTS jobs_claim_idx ON jobs (queue, priority, run_at, id)
    WHERE status = 'pending' AND NOT suspect;
CREATE INDEX IF NOT EXISTS jobs_suspect_idx ON jobs (queue, priority, run_at, id)
    WHERE status = 'pending' AND suspect;
