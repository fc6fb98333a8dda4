-- Core of durable delivery: notifications, their acknowledgement, every
-- delivery to a socket, and the append-only audit log.
-- Times are integer milliseconds since the Unix epoch (UTC).

CREATE TABLE notifications (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT    NOT NULL UNIQUE,
    idempotency_key    TEXT    UNIQUE,
    request_hash       TEXT    NOT NULL,
    type               TEXT    NOT NULL,
    severity           TEXT    NOT NULL CHECK (severity IN ('critical', 'urgent', 'actionable')),
    title              TEXT    NOT NULL,
    message            TEXT,
    patient_id         TEXT,
    study_id           TEXT,
    accession_number   TEXT,
    recipient_user_id  TEXT,
    recipient_role     TEXT,
    created_by         TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    ack_deadline       INTEGER NOT NULL,
    state              TEXT    NOT NULL CHECK (state IN ('pending', 'acknowledged', 'escalated', 'cancelled')),
    acknowledged_at    INTEGER,
    acknowledged_by    TEXT,
    cancelled_at       INTEGER,
    cancelled_by       TEXT,
    cancel_reason      TEXT,
    CHECK ((recipient_user_id IS NULL) <> (recipient_role IS NULL))
);
CREATE INDEX notifications_open_by_user ON notifications (recipient_user_id, state, seq);
CREATE INDEX notifications_open_by_role ON notifications (recipient_role, state, seq);
CREATE INDEX notifications_by_patient ON notifications (patient_id, seq);
CREATE INDEX notifications_by_study ON notifications (study_id, seq);
CREATE INDEX notifications_by_state_deadline ON notifications (state, ack_deadline);

-- One row per notification at most: the primary key is what makes the first
-- acknowledgement win, on both databases.
CREATE TABLE acknowledgements (
    notification_id  TEXT    PRIMARY KEY REFERENCES notifications (id),
    user_id          TEXT    NOT NULL,
    acknowledged_at  INTEGER NOT NULL,
    socket_id        TEXT,
    via              TEXT    NOT NULL
);

CREATE TABLE deliveries (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    notification_id  TEXT    NOT NULL REFERENCES notifications (id),
    user_id          TEXT    NOT NULL,
    socket_id        TEXT    NOT NULL,
    delivered_at     INTEGER NOT NULL,
    replayed         INTEGER NOT NULL
);
CREATE INDEX deliveries_by_notification ON deliveries (notification_id, seq);

-- Tamper-evident: each row's hash covers its content and the previous
-- row's hash; `seq` is the position in that chain, handed out by
-- audit_chain_head (which also holds the hash of the last row).
CREATE TABLE audit_log (
    seq              INTEGER PRIMARY KEY,
    at               INTEGER NOT NULL,
    action           TEXT    NOT NULL,
    actor_id         TEXT,
    actor_role       TEXT,
    notification_id  TEXT,
    session_id       TEXT,
    user_id          TEXT,
    patient_id       TEXT,
    study_id         TEXT,
    outcome          TEXT    NOT NULL,
    detail           TEXT    NOT NULL,
    prev_hash        TEXT    NOT NULL,
    hash             TEXT    NOT NULL
);

-- One row: the chain's last position and hash. Appending locks it, which
-- gives the chain one order even with several daemons on one database.
CREATE TABLE audit_chain_head (
    id    INTEGER  PRIMARY KEY CHECK (id = 1),
    seq   INTEGER  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_chain_head (id, seq, hash)
    VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE INDEX audit_log_by_at ON audit_log (at, seq);
CREATE INDEX audit_log_by_action ON audit_log (action, seq);
CREATE INDEX audit_log_by_patient ON audit_log (patient_id, seq);
CREATE INDEX audit_log_by_study ON audit_log (study_id, seq);
CREATE INDEX audit_log_by_notification ON audit_log (notification_id, seq);
CREATE INDEX audit_log_by_user ON audit_log (user_id, seq);

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit_log is append-only');
END;
