-- Escalation: each notification's steps are written when it is raised (a
-- snapshot of the policy in force), claimed by the scheduler when due, and
-- each step's emails go through a persisted outbox.

CREATE TABLE escalation_steps (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id  TEXT    NOT NULL REFERENCES notifications (id),
    level            INTEGER NOT NULL,
    due_at           INTEGER NOT NULL,
    -- JSON array: addresses, or "recipient" for the recipient's e-mail.
    targets          TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('scheduled', 'fired', 'stopped')),
    fired_at         INTEGER,
    -- JSON array of the addresses the step resolved to when it fired.
    addresses        TEXT,
    -- Set on a policy's last step when it repeats: the next repetition is
    -- written when this one fires.
    repeat_every_ms  INTEGER,
    repeats_left     INTEGER,
    UNIQUE (notification_id, level)
);
CREATE INDEX escalation_steps_due ON escalation_steps (due_at) WHERE state = 'scheduled';

CREATE TABLE email_outbox (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    step_seq         INTEGER NOT NULL REFERENCES escalation_steps (seq),
    notification_id  TEXT    NOT NULL,
    level            INTEGER NOT NULL,
    address          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL UNIQUE,
    subject          TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    -- A sender's claim expires, so a crashed sender's emails are retried.
    lease_until      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    sent_at          INTEGER,
    UNIQUE (step_seq, address)
);
CREATE INDEX email_outbox_pending ON email_outbox (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX email_outbox_by_notification ON email_outbox (notification_id, seq);

-- Who can be reached: learnt from tokens (email, name, roles).
CREATE TABLE directory_users (
    user_id     TEXT    PRIMARY KEY,
    email       TEXT,
    name        TEXT,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE directory_roles (
    user_id  TEXT NOT NULL REFERENCES directory_users (user_id),
    role     TEXT NOT NULL,
    PRIMARY KEY (role, user_id)
);
