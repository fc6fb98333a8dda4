//! SQL for revoked users: whose older tokens are refused on connect, and
//! until when.

use sqlx::{AnyConnection, Row};

use super::StoreError;
use crate::clock::Timestamp;

/// Records (or renews) a revocation of `user_id`'s tokens issued before
/// `revoked_at`, in force until `until`.
pub async fn revoke(
    conn: &mut AnyConnection,
    user_id: &str,
    revoked_at: Timestamp,
    until: Timestamp,
    revoked_by: &str,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO revocations (user_id, revoked_at, until, revoked_by, reason) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET revoked_at = excluded.revoked_at, \
         until = excluded.until, revoked_by = excluded.revoked_by, reason = excluded.reason",
    )
    .bind(user_id)
    .bind(revoked_at.as_millis())
    .bind(until.as_millis())
    .bind(revoked_by)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// When `user_id`'s tokens were revoked, if that revocation is still in
/// force at `now`.
pub async fn revoked_at(
    conn: &mut AnyConnection,
    user_id: &str,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let row = sqlx::query("SELECT revoked_at FROM revocations WHERE user_id = $1 AND until > $2")
        .bind(user_id)
        .bind(now.as_millis())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row
        .map(|row| row.try_get::<i64, _>("revoked_at"))
        .transpose()?
        .map(Timestamp::from_millis))
}
