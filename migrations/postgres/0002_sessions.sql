-- Sessions: known from the first connection whose token carries a session
-- id, or registered over HTTP. The scheduler looks only at `next_due_at`
-- (the warning time, then the expiry time) of active sessions.

CREATE TABLE sessions (
    id                TEXT    PRIMARY KEY,
    user_id           TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('active', 'expired', 'terminated')),
    started_at        BIGINT  NOT NULL,
    last_activity_at  BIGINT  NOT NULL,
    idle_timeout_ms   BIGINT  NOT NULL,
    max_lifetime_ms   BIGINT  NOT NULL,
    warning_before_ms BIGINT  NOT NULL,
    expires_at        BIGINT  NOT NULL,
    -- The expiry time the warning was sent for: one warning per expiry time.
    warned_for        BIGINT,
    next_due_at       BIGINT  NOT NULL,
    ended_at          BIGINT,
    end_reason        TEXT
);
CREATE INDEX sessions_due ON sessions (next_due_at) WHERE state = 'active';
CREATE INDEX sessions_by_user ON sessions (user_id, started_at);
