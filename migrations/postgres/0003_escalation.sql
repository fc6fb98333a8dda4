-- Escalation: each notification's steps are written when it is raised (a
-- snapshot of the policy in force), claimed by the scheduler when due, and
-- each step's emails go through a persisted outbox.

CREATE TABLE escalation_steps (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id  TEXT    NOT NULL REFERENCES notifications (id),
    level            BIGINT  NOT NULL,
    due_at           BIGINT  NOT NULL,
    -- JSON array: addresses, or "recipient" for the recipient's e-mail.
    targets          TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('scheduled', 'fired', 'stopped')),
    fired_at         BIGINT,
    -- JSON array of the addresses the step resolved to when it fired.
    addresses        TEXT,
    -- Set on a policy's last step when it repeats: the next repetition is
    -- written when this one fires.
    repeat_every_ms  BIGINT,
    repeats_left     BIGINT,
    UNIQUE (notification_id, level)
);
CREATE INDEX escalation_steps_due ON escalation_steps (due_at) WHERE state = 'scheduled';

CREATE TABLE email_outbox (
    seq              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    step_seq         BIGINT  NOT NULL REFERENCES escalation_steps (seq),
    notification_id  TEXT    NOT NULL,
    level            BIGINT  NOT NULL,
    address          TEXT    NOT NULL,
    message_id       TEXT    NOT NULL UNIQUE,
    subject          TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts         BIGINT  NOT NULL,
    next_attempt_at  BIGINT  NOT NULL,
    -- A sender's claim expires, so a crashed sender's emails are retried.
    lease_until      BIGINT,
    last_error       TEXT,
    created_at       BIGINT  NOT NULL,
    sent_at          BIGINT,
    UNIQUE (step_seq, address)
);
CREATE INDEX email_outbox_pending ON email_outbox (next_attempt_at) WHERE state IN ('pending', 'sending');
CREATE INDEX email_outbox_by_notification ON email_outbox (notification_id, seq);

-- Who can be reached: learnt from tokens (email, name, roles).
CREATE TABLE directory_users (
    user_id     TEXT    PRIMARY KEY,
    email       TEXT,
    name        TEXT,
    updated_at  BIGINT  NOT NULL
);
CREATE TABLE directory_roles (
    user_id  TEXT NOT NULL REFERENCES directory_users (user_id),
    role     TEXT NOT NULL,
    PRIMARY KEY (role, user_id)
);
