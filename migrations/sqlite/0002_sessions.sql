-- Sessions: known from the first connection whose token carries a session
-- id, or registered over HTTP. The scheduler looks only at `next_due_at`
-- (the warning time, then the expiry time) of active sessions.

CREATE TABLE sessions (
    id                TEXT    PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('active', 'expired', 'terminated')),
    started_at        INTEGER NOT NULL,
    last_activity_at  INTEGER NOT NULL,
    idle_timeout_ms   INTEGER NOT NULL,
    max_lifetime_ms   INTEGER NOT NULL,
    warning_before_ms INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    -- The expiry time the warning was sent for: one warning per expiry time.
    warned_for        INTEGER,
    next_due_at       INTEGER NOT NULL,
    ended_at          INTEGER,
    end_reason        TEXT
);
CREATE INDEX sessions_due ON sessions (next_due_at) WHERE state = 'active';
CREATE INDEX sessions_by_user ON sessions (user_id, started_at);
