//! SQL for notifications, acknowledgements and deliveries.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::{StoreError, placeholders};
use crate::clock::Timestamp;
use crate::notifications::{NewNotification, Notification, Recipient, State};

const COLUMNS: &str = "seq, id, type, severity, title, message, patient_id, study_id, \
     accession_number, recipient_user_id, recipient_role, created_by, created_at, \
     ack_deadline, state, acknowledged_at, acknowledged_by, cancelled_at, cancelled_by, \
     cancel_reason, request_hash";

fn from_row(row: &AnyRow) -> Result<Notification, sqlx::Error> {
    let text = |name: &str| row.try_get::<Option<String>, _>(name);
    let time = |name: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row
            .try_get::<Option<i64>, _>(name)?
            .map(Timestamp::from_millis))
    };
    let decode = |name: &str, what: &str| sqlx::Error::ColumnDecode {
        index: name.to_string(),
        source: format!("unknown {what}").into(),
    };
    let recipient = match (text("recipient_user_id")?, text("recipient_role")?) {
        (Some(user), _) => Recipient::User(user),
        (None, Some(role)) => Recipient::Role(role),
        (None, None) => return Err(decode("recipient_user_id", "recipient")),
    };
    Ok(Notification {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        kind: row.try_get("type")?,
        severity: row
            .try_get::<String, _>("severity")?
            .parse()
            .map_err(|()| decode("severity", "severity"))?,
        title: row.try_get("title")?,
        message: text("message")?,
        patient_id: text("patient_id")?,
        study_id: text("study_id")?,
        accession_number: text("accession_number")?,
        recipient,
        created_by: row.try_get("created_by")?,
        created_at: Timestamp::from_millis(row.try_get("created_at")?),
        ack_deadline: Timestamp::from_millis(row.try_get("ack_deadline")?),
        state: row
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|()| decode("state", "state"))?,
        acknowledged_at: time("acknowledged_at")?,
        acknowledged_by: text("acknowledged_by")?,
        cancelled_at: time("cancelled_at")?,
        cancelled_by: text("cancelled_by")?,
        cancel_reason: text("cancel_reason")?,
        request_hash: row.try_get("request_hash")?,
    })
}

/// Inserts a new notification. Returns `None` when its id or idempotency
/// key is already taken (the caller then looks up the earlier one).
pub async fn insert(
    conn: &mut AnyConnection,
    new: &NewNotification,
) -> Result<Option<Notification>, StoreError> {
    let (user, role) = match &new.recipient {
        Recipient::User(user) => (Some(user.as_str()), None),
        Recipient::Role(role) => (None, Some(role.as_str())),
    };
    let row = sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO notifications (id, idempotency_key, request_hash, type, severity, title, \
         message, patient_id, study_id, accession_number, recipient_user_id, recipient_role, \
         created_by, created_at, ack_deadline, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'pending') \
         ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    )))
    .bind(&new.id)
    .bind(new.idempotency_key.as_deref())
    .bind(&new.request_hash)
    .bind(&new.kind)
    .bind(new.severity.as_str())
    .bind(&new.title)
    .bind(new.message.as_deref())
    .bind(new.patient_id.as_deref())
    .bind(new.study_id.as_deref())
    .bind(new.accession_number.as_deref())
    .bind(user)
    .bind(role)
    .bind(&new.created_by)
    .bind(new.created_at.as_millis())
    .bind(new.ack_deadline.as_millis())
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn find(conn: &mut AnyConnection, id: &str) -> Result<Option<Notification>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// The notification readback numbered `seq` (its reference).
pub async fn find_by_seq(
    conn: &mut AnyConnection,
    seq: i64,
) -> Result<Option<Notification>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications WHERE seq = $1"
    )))
    .bind(seq)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// The notifications with these ids (those that exist), in no order.
pub async fn find_many(
    conn: &mut AnyConnection,
    ids: &[String],
) -> Result<Vec<Notification>, StoreError> {
    let mut found = Vec::with_capacity(ids.len());
    // Well under both databases' limits on bound parameters.
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE id IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(id);
        }
        for row in query.fetch_all(&mut *conn).await? {
            found.push(from_row(&row)?);
        }
    }
    Ok(found)
}

pub async fn find_by_idempotency_key(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Option<Notification>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications WHERE idempotency_key = $1"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// Where a page of a user's open notifications (in [`open_for`]'s order)
/// ends: the next page starts after this deadline and `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCursor {
    pub ack_deadline: Timestamp,
    pub seq: i64,
}

impl OpenCursor {
    pub fn after(notification: &Notification) -> Self {
        Self {
            ack_deadline: notification.ack_deadline,
            seq: notification.seq,
        }
    }
}

/// `WHERE` of a user's open notifications (direct, or through one of
/// `roles`): `$1` is the user, `$2…` the roles.
fn open_clause(roles: &[String]) -> String {
    // Two indexed branches (`notifications_open_by_user`, `…_by_role`).
    let open = "state IN ('pending', 'escalated')";
    let role_clause = if roles.is_empty() {
        String::new()
    } else {
        format!(
            " OR (recipient_role IN ({}) AND {open})",
            placeholders(2, roles.len())
        )
    };
    format!("((recipient_user_id = $1 AND {open}){role_clause})")
}

/// A user's open notifications, the ones due first (acknowledgement
/// deadline, then raise order): at most `limit`, after `after`.
pub async fn open_for(
    conn: &mut AnyConnection,
    user_id: &str,
    roles: &[String],
    after: Option<OpenCursor>,
    limit: u32,
) -> Result<Vec<Notification>, StoreError> {
    let next = roles.len() + 2;
    let cursor_clause = match after {
        Some(_) => format!(
            " AND (ack_deadline > ${next} OR (ack_deadline = ${next} AND seq > ${}))",
            next + 1
        ),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE {}{cursor_clause} \
         ORDER BY ack_deadline, seq LIMIT {limit}",
        open_clause(roles)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id);
    for role in roles {
        query = query.bind(role);
    }
    if let Some(after) = after {
        query = query.bind(after.ack_deadline.as_millis()).bind(after.seq);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Open notifications of one severity, due first: at most `limit`, and how
/// many are open in all (for the daily digest).
pub async fn open_of_severity(
    conn: &mut AnyConnection,
    severity: &str,
    limit: u32,
) -> Result<(Vec<Notification>, i64), StoreError> {
    let open = "severity = $1 AND state IN ('pending', 'escalated')";
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM notifications WHERE {open} ORDER BY ack_deadline, seq LIMIT {limit}"
    )))
    .bind(severity)
    .fetch_all(&mut *conn)
    .await?;
    let total: i64 = sqlx::query(AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM notifications WHERE {open}"
    )))
    .bind(severity)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    Ok((rows.iter().map(from_row).collect::<Result<_, _>>()?, total))
}

/// How many notifications are open for a user (direct or through a role).
pub async fn count_open_for(
    conn: &mut AnyConnection,
    user_id: &str,
    roles: &[String],
) -> Result<i64, StoreError> {
    let sql = format!(
        "SELECT COUNT(*) FROM notifications WHERE {}",
        open_clause(roles)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id);
    for role in roles {
        query = query.bind(role);
    }
    Ok(query.fetch_one(&mut *conn).await?.try_get::<i64, _>(0)?)
}

/// Compare-and-set from an open state to `acknowledged`, plus the
/// acknowledgement row. Returns false when the notification was not open
/// (someone else got there first, or it was cancelled): nothing is written.
pub async fn acknowledge(
    conn: &mut AnyConnection,
    id: &str,
    user_id: &str,
    connection_id: Option<&str>,
    via: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE notifications SET state = 'acknowledged', acknowledged_at = $1, acknowledged_by = $2 \
         WHERE id = $3 AND state IN ('pending', 'escalated')",
    )
    .bind(at.as_millis())
    .bind(user_id)
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO acknowledgements (notification_id, user_id, acknowledged_at, socket_id, via) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user_id)
    .bind(at.as_millis())
    .bind(connection_id)
    .bind(via)
    .execute(&mut *conn)
    .await?;
    Ok(true)
}

/// Compare-and-set from an open state to `cancelled`.
pub async fn cancel(
    conn: &mut AnyConnection,
    id: &str,
    by: &str,
    reason: &str,
    at: Timestamp,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE notifications SET state = 'cancelled', cancelled_at = $1, cancelled_by = $2, \
         cancel_reason = $3 WHERE id = $4 AND state IN ('pending', 'escalated')",
    )
    .bind(at.as_millis())
    .bind(by)
    .bind(reason)
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// One notification sent to one socket.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub notification_id: String,
    pub user_id: String,
    /// The socket's connection id (column `socket_id`, field `socketId` in
    /// the API): never its Engine.IO session id, a bearer handle.
    #[serde(rename = "socketId")]
    pub connection_id: String,
    pub delivered_at: Timestamp,
    pub replayed: bool,
}

pub async fn insert_delivery(
    conn: &mut AnyConnection,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO deliveries (notification_id, user_id, socket_id, delivered_at, replayed) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&delivery.notification_id)
    .bind(&delivery.user_id)
    .bind(&delivery.connection_id)
    .bind(delivery.delivered_at.as_millis())
    .bind(i64::from(delivery.replayed))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub async fn deliveries(
    conn: &mut AnyConnection,
    notification_id: &str,
) -> Result<Vec<Delivery>, StoreError> {
    let rows = sqlx::query(
        "SELECT notification_id, user_id, socket_id, delivered_at, replayed FROM deliveries \
         WHERE notification_id = $1 ORDER BY seq",
    )
    .bind(notification_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Delivery {
                notification_id: row.try_get("notification_id")?,
                user_id: row.try_get("user_id")?,
                connection_id: row.try_get("socket_id")?,
                delivered_at: Timestamp::from_millis(row.try_get("delivered_at")?),
                replayed: row.try_get::<i64, _>("replayed")? != 0,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}

/// Filters of `GET /api/v1/notifications`; all optional, combined with AND.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<State>,
    pub user_id: Option<String>,
    pub patient_id: Option<String>,
    pub study_id: Option<String>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    /// Only rows older than this `seq` (the cursor of the previous page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// Newest first, keyset-paginated on `seq` so pages never shift.
pub async fn list(
    conn: &mut AnyConnection,
    filter: &ListFilter,
) -> Result<Vec<Notification>, StoreError> {
    enum Arg {
        Text(String),
        Int(i64),
    }
    let mut clauses: Vec<String> = Vec::new();
    let mut args: Vec<Arg> = Vec::new();
    let mut add = |clause: &str, arg: Arg| {
        args.push(arg);
        clauses.push(clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(state) = filter.state {
        add("state = ?", Arg::Text(state.as_str().to_owned()));
    }
    if let Some(user) = &filter.user_id {
        add("recipient_user_id = ?", Arg::Text(user.clone()));
    }
    if let Some(patient) = &filter.patient_id {
        add("patient_id = ?", Arg::Text(patient.clone()));
    }
    if let Some(study) = &filter.study_id {
        add("study_id = ?", Arg::Text(study.clone()));
    }
    if let Some(since) = filter.since {
        add("created_at >= ?", Arg::Int(since.as_millis()));
    }
    if let Some(until) = filter.until {
        add("created_at < ?", Arg::Int(until.as_millis()));
    }
    if let Some(before) = filter.before_seq {
        add("seq < ?", Arg::Int(before));
    }
    let where_clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications {where_clause} ORDER BY seq DESC LIMIT {}",
        filter.limit
    );
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for arg in args {
        query = match arg {
            Arg::Text(text) => query.bind(text),
            Arg::Int(int) => query.bind(int),
        };
    }
    let rows = query.fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

/// Compare-and-set of an open notification to `escalated`. It takes the
/// notification's row lock, so an acknowledgement or cancel racing with an
/// escalation step is ordered against it: whichever commits first wins.
pub async fn mark_escalated(conn: &mut AnyConnection, id: &str) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE notifications SET state = 'escalated' WHERE id = $1 AND state IN ('pending', 'escalated')",
    )
    .bind(id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// The open notifications of one severity, for the metrics.
#[derive(Debug, Clone)]
pub struct OpenSummary {
    pub severity: String,
    pub open: i64,
    /// Open past their acknowledgement deadline at the time asked.
    pub overdue: i64,
    pub oldest_created_at: Option<Timestamp>,
}

/// Open notifications per severity at `now`: one aggregate over the open
/// rows (found through the `state` index), so a metrics scrape costs one
/// query however many notifications were ever raised.
pub async fn open_summary(
    conn: &mut AnyConnection,
    now: Timestamp,
) -> Result<Vec<OpenSummary>, StoreError> {
    let rows = sqlx::query(
        "SELECT severity, COUNT(*) AS open_count, \
           SUM(CASE WHEN ack_deadline < $1 THEN 1 ELSE 0 END) AS overdue_count, \
           MIN(created_at) AS oldest \
         FROM notifications WHERE state IN ('pending', 'escalated') GROUP BY severity",
    )
    .bind(now.as_millis())
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(OpenSummary {
                severity: row.try_get("severity")?,
                open: row.try_get("open_count")?,
                overdue: row.try_get::<Option<i64>, _>("overdue_count")?.unwrap_or(0),
                oldest_created_at: row
                    .try_get::<Option<i64>, _>("oldest")?
                    .map(Timestamp::from_millis),
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
