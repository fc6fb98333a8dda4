//! SQL for the time-to-acknowledge report, computed in the database.
//!
//! Percentiles use the nearest-rank definition (the value at rank
//! `ceil(p * n)`), computed with window functions that SQLite and
//! PostgreSQL both have.

use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::StoreError;
use crate::clock::Timestamp;
use crate::severity::Severity;

/// How rows are grouped. Each variant maps to a fixed SQL expression:
/// nothing from the request is spliced into the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// The recipient user; for role notifications the user who acknowledged,
    /// else `role:<role>`.
    User,
    /// The recipient role, or `(direct)` for notifications to a user.
    Role,
    Severity,
}

impl GroupBy {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(GroupBy::User),
            "role" => Some(GroupBy::Role),
            "severity" => Some(GroupBy::Severity),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::User => "user",
            GroupBy::Role => "role",
            GroupBy::Severity => "severity",
        }
    }

    fn expression(self) -> &'static str {
        match self {
            GroupBy::User => {
                "COALESCE(n.recipient_user_id, n.acknowledged_by, 'role:' || n.recipient_role)"
            }
            GroupBy::Role => "COALESCE(n.recipient_role, '(direct)')",
            GroupBy::Severity => "n.severity",
        }
    }
}

/// One group's figures; times in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub group: String,
    pub count: i64,
    pub acknowledged: i64,
    pub within_deadline: i64,
    pub still_open: i64,
    pub escalated: i64,
    pub median_ms: Option<i64>,
    pub p90_ms: Option<i64>,
}

/// Notifications created in `[from, to)`, optionally of one severity.
pub async fn acknowledgements(
    conn: &mut AnyConnection,
    from: Timestamp,
    to: Timestamp,
    severity: Option<Severity>,
    group_by: GroupBy,
) -> Result<Vec<ReportRow>, StoreError> {
    let severity_clause = if severity.is_some() {
        "AND n.severity = $3"
    } else {
        ""
    };
    let sql = format!(
        "WITH base AS ( \
           SELECT {group} AS grp, n.state, n.ack_deadline, n.acknowledged_at, \
                  n.acknowledged_at - n.created_at AS tta, \
                  CASE WHEN EXISTS (SELECT 1 FROM escalation_steps s \
                                    WHERE s.notification_id = n.id AND s.state = 'fired') \
                       THEN 1 ELSE 0 END AS escalated \
           FROM notifications n \
           WHERE n.created_at >= $1 AND n.created_at < $2 {severity_clause}), \
         ranked AS ( \
           SELECT grp, tta, ROW_NUMBER() OVER (PARTITION BY grp ORDER BY tta) AS rank_in_group, \
                  COUNT(*) OVER (PARTITION BY grp) AS acknowledged_in_group \
           FROM base WHERE tta IS NOT NULL) \
         SELECT b.grp, COUNT(*) AS total, \
           SUM(CASE WHEN b.acknowledged_at IS NOT NULL THEN 1 ELSE 0 END) AS acknowledged, \
           SUM(CASE WHEN b.acknowledged_at IS NOT NULL AND b.acknowledged_at <= b.ack_deadline \
                    THEN 1 ELSE 0 END) AS within_deadline, \
           SUM(CASE WHEN b.state IN ('pending', 'escalated') THEN 1 ELSE 0 END) AS still_open, \
           SUM(b.escalated) AS escalated, \
           (SELECT r.tta FROM ranked r WHERE r.grp = b.grp \
              AND r.rank_in_group = (r.acknowledged_in_group + 1) / 2) AS median, \
           (SELECT r.tta FROM ranked r WHERE r.grp = b.grp \
              AND r.rank_in_group = (9 * r.acknowledged_in_group + 9) / 10) AS p90 \
         FROM base b GROUP BY b.grp ORDER BY b.grp",
        group = group_by.expression(),
    );
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(from.as_millis())
        .bind(to.as_millis());
    if let Some(severity) = severity {
        query = query.bind(severity.as_str());
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter()
        .map(|row| {
            Ok(ReportRow {
                group: row.try_get::<Option<String>, _>("grp")?.unwrap_or_default(),
                count: row.try_get("total")?,
                acknowledged: row.try_get::<Option<i64>, _>("acknowledged")?.unwrap_or(0),
                within_deadline: row
                    .try_get::<Option<i64>, _>("within_deadline")?
                    .unwrap_or(0),
                still_open: row.try_get::<Option<i64>, _>("still_open")?.unwrap_or(0),
                escalated: row.try_get::<Option<i64>, _>("escalated")?.unwrap_or(0),
                median_ms: row.try_get("median")?,
                p90_ms: row.try_get("p90")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StoreError::from)
}
