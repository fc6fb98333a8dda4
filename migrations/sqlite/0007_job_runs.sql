-- Calendar jobs ([schedule]): one row per firing, keyed by the job and the
-- slot it fires for (the scheduled time, ms UTC). The insert is the claim,
-- so daemons sharing the database run each slot once; a claim whose lease
-- ran out unfinished (its daemon died mid-job) may be claimed again.
CREATE TABLE job_runs (
    job          TEXT    NOT NULL,
    slot         INTEGER  NOT NULL,
    claimed_by   TEXT    NOT NULL,
    claimed_at   INTEGER  NOT NULL,
    lease_until  INTEGER  NOT NULL,
    attempts     INTEGER  NOT NULL,
    finished_at  INTEGER,
    outcome      TEXT    CHECK (outcome IN ('ok', 'failed')),
    detail       TEXT,
    PRIMARY KEY (job, slot)
);
