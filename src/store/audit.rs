//! SQL for the append-only audit log.

use sqlx::AnyConnection;

use super::{Store, StoreError};
use crate::audit::AuditEvent;

/// Appends one row. Callers pass the connection of the transaction that
/// made the change, so the change and its audit row commit together.
pub async fn append(conn: &mut AnyConnection, event: &AuditEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, action, actor_id, actor_role, notification_id, session_id, \
         user_id, patient_id, study_id, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(event.at.as_millis())
    .bind(event.action.as_str())
    .bind(event.actor_id.as_deref())
    .bind(event.actor_role.as_deref())
    .bind(event.notification_id.as_deref())
    .bind(event.session_id.as_deref())
    .bind(event.user_id.as_deref())
    .bind(event.patient_id.as_deref())
    .bind(event.study_id.as_deref())
    .bind(event.outcome)
    .bind(event.detail.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Appends one row in a transaction of its own, for events that change
/// nothing else (refusals, admin actions on sockets).
pub async fn append_alone(store: &Store, event: &AuditEvent) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    append(&mut tx, event).await?;
    tx.commit().await?;
    Ok(())
}
