-- Revoked users: while `until` has not passed, the user's tokens issued
-- before `revoked_at` (or without `iat`) are refused on connect, so a
-- disconnected user cannot simply reconnect with the same token.
CREATE TABLE revocations (
    user_id     TEXT    PRIMARY KEY,
    revoked_at  INTEGER  NOT NULL,
    until       INTEGER  NOT NULL,
    revoked_by  TEXT    NOT NULL,
    reason      TEXT
);
