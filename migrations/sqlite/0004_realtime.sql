-- The operator console and `GET /api/v1/sessions` list active sessions in
-- order of expiry, for everyone or for one user.
CREATE INDEX sessions_active_by_expiry ON sessions (expires_at) WHERE state = 'active';
CREATE INDEX sessions_active_by_user ON sessions (user_id, expires_at) WHERE state = 'active';
