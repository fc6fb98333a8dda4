//! What reviewers do with the log: read it, export it, verify it (the
//! chain, each finding's content, signed checkpoints), and the
//! time-to-acknowledge report.
//! Never: write to the database — verifying must work on a read-only copy.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::AnyConnection;

use super::checkpoint::Checkpoint;
use super::{Action, AuditRow, ChainCheck, GENESIS_HASH, Tamper, dicom_event};
use crate::clock::Timestamp;
use crate::notifications::content_digest;
use crate::severity::Severity;
use crate::store::audit::{self as sql, AuditFilter, WALK_PAGE};
use crate::store::notifications;
use crate::store::reports::{self, GroupBy, ReportRow};
use crate::store::{Store, StoreError};

/// A row as the API shows it: `detail` as JSON, plus the DICOM codes.
pub fn row_json(row: &AuditRow) -> Value {
    let mut value = serde_json::to_value(row).expect("serializable");
    value["detail"] =
        serde_json::from_str(&row.detail).unwrap_or(Value::String(row.detail.clone()));
    if let Some((event_id, event_type)) = dicom_event(&row.action) {
        value["dicom"] = json!({ "eventId": event_id, "eventTypeCode": event_type });
    }
    value
}

pub const CSV_HEADER: [&str; 14] = [
    "seq",
    "at",
    "action",
    "actorId",
    "actorRole",
    "notificationId",
    "sessionId",
    "userId",
    "patientId",
    "studyId",
    "outcome",
    "detail",
    "prevHash",
    "hash",
];

/// One row as CSV fields, in [`CSV_HEADER`] order.
pub fn csv_fields(row: &AuditRow) -> [String; 14] {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    [
        row.seq.to_string(),
        row.at.to_string(),
        row.action.clone(),
        text(&row.actor_id),
        text(&row.actor_role),
        text(&row.notification_id),
        text(&row.session_id),
        text(&row.user_id),
        text(&row.patient_id),
        text(&row.study_id),
        row.outcome.clone(),
        row.detail.clone(),
        row.prev_hash.clone(),
        row.hash.clone(),
    ]
}

/// Encodes rows as RFC 4180 CSV (with the header when `header`).
pub fn to_csv(rows: &[AuditRow], header: bool) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    if header {
        writer.write_record(CSV_HEADER).expect("writing to memory");
    }
    for row in rows {
        writer
            .write_record(csv_fields(row))
            .expect("writing to memory");
    }
    writer.into_inner().expect("flushing to memory")
}

/// Result of walking the whole chain.
#[derive(Debug)]
pub struct Verified {
    pub rows: u64,
    /// `notification.raised` rows whose finding still matches its digest.
    pub findings: u64,
    /// `notification.raised` rows written before digests existed: their
    /// finding's content could not be compared.
    pub undigested: u64,
    /// Checkpoints the log was shown to extend.
    pub checkpoints: usize,
    /// The chain head the walk ended at: what a new checkpoint signs.
    pub head_seq: i64,
    pub head_hash: String,
    pub took: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("tampering detected: {0}")]
    Tamper(#[from] Tamper),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A signed checkpoint whose signature has been checked, and where it came
/// from (a file name), so a failure can name it.
pub struct Vouched {
    pub source: String,
    pub checkpoint: Checkpoint,
}

/// Walks the log from the first row to the chain head, page by page, and
/// reports the first row that was changed, deleted or inserted out of
/// order; a finding whose content no longer matches the digest in its
/// `notification.raised` row; and a checkpoint the log no longer extends
/// (its row gone or holding another hash — a chain recomputed after the
/// checkpoint was signed).
pub async fn verify(store: &Store, checkpoints: &[Vouched]) -> Result<Verified, VerifyError> {
    let started = Instant::now();
    let mut conn = store.conn().await?;
    // The head first: rows appended while we walk are after it and not
    // checked this time.
    let (head_seq, head_hash) = sql::head(&mut conn).await?;
    let mut expected: BTreeMap<i64, Vec<&Vouched>> = BTreeMap::new();
    for vouched in checkpoints {
        let seq = vouched.checkpoint.seq;
        if seq > head_seq {
            return Err(Tamper::CheckpointBeyondHead {
                seq,
                head: head_seq,
                checkpoint: vouched.source.clone(),
            }
            .into());
        }
        expected.entry(seq).or_default().push(vouched);
    }
    // Seq 0 is the empty log: the genesis hash.
    compare(&expected, 0, GENESIS_HASH)?;
    let mut check = ChainCheck::default();
    let (mut findings, mut undigested) = (0, 0);
    let mut after = 0;
    loop {
        let page = sql::page(&mut conn, &AuditFilter::default(), after, WALK_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let page: Vec<&AuditRow> = page.iter().take_while(|r| r.seq <= head_seq).collect();
        for row in &page {
            check.check(row)?;
            compare(&expected, row.seq, &row.hash)?;
        }
        let (matched, skipped) = check_findings(&mut conn, &page).await?;
        findings += matched;
        undigested += skipped;
        if after >= head_seq {
            break;
        }
    }
    check.finish(head_seq, &head_hash)?;
    Ok(Verified {
        rows: check.rows,
        findings,
        undigested,
        checkpoints: checkpoints.len(),
        head_seq,
        head_hash,
        took: started.elapsed(),
    })
}

/// Every checkpoint at `seq` must have signed exactly `hash`.
fn compare(expected: &BTreeMap<i64, Vec<&Vouched>>, seq: i64, hash: &str) -> Result<(), Tamper> {
    for vouched in expected.get(&seq).into_iter().flatten() {
        if vouched.checkpoint.hash != hash {
            return Err(Tamper::CheckpointMismatch {
                seq,
                checkpoint: vouched.source.clone(),
            });
        }
    }
    Ok(())
}

/// Recomputes the content digest of each finding raised in `rows` from the
/// notifications table. Returns (matched, rows without a digest).
async fn check_findings(
    conn: &mut AnyConnection,
    rows: &[&AuditRow],
) -> Result<(u64, u64), VerifyError> {
    let mut digested = Vec::new();
    let mut undigested = 0;
    for row in rows
        .iter()
        .filter(|r| r.action == Action::NotificationRaised.as_str())
    {
        let digest = serde_json::from_str::<Value>(&row.detail)
            .ok()
            .and_then(|d| d["contentDigest"].as_str().map(str::to_owned));
        match (digest, &row.notification_id) {
            (Some(digest), Some(id)) => digested.push((row.seq, id.clone(), digest)),
            _ => undigested += 1,
        }
    }
    if digested.is_empty() {
        return Ok((0, undigested));
    }
    let ids: Vec<String> = digested.iter().map(|(_, id, _)| id.clone()).collect();
    let stored: HashMap<String, String> = notifications::find_many(conn, &ids)
        .await?
        .iter()
        .map(|n| (n.id.clone(), content_digest(n)))
        .collect();
    for (seq, notification_id, digest) in &digested {
        match stored.get(notification_id) {
            Some(now) if now == digest => {}
            Some(_) => {
                return Err(Tamper::ContentChanged {
                    seq: *seq,
                    notification_id: notification_id.clone(),
                }
                .into());
            }
            None => {
                return Err(Tamper::ContentMissing {
                    seq: *seq,
                    notification_id: notification_id.clone(),
                }
                .into());
            }
        }
    }
    Ok((digested.len() as u64, undigested))
}

/// The report's answer.
#[derive(Debug, Clone)]
pub struct Report {
    pub from: Timestamp,
    pub to: Timestamp,
    pub severity: Option<Severity>,
    pub group_by: GroupBy,
    pub rows: Vec<ReportRow>,
}

pub async fn report(
    store: &Store,
    from: Timestamp,
    to: Timestamp,
    severity: Option<Severity>,
    group_by: GroupBy,
) -> Result<Report, StoreError> {
    let mut conn = store.conn().await?;
    let rows = reports::acknowledgements(&mut conn, from, to, severity, group_by).await?;
    Ok(Report {
        from,
        to,
        severity,
        group_by,
        rows,
    })
}

impl Report {
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "group": r.group,
                    "count": r.count,
                    "acknowledged": r.acknowledged,
                    "acknowledgedWithinDeadline": r.within_deadline,
                    "acknowledgedWithinDeadlinePercent": percent(r.within_deadline, r.count),
                    "medianTimeToAcknowledge": r.median_ms,
                    "p90TimeToAcknowledge": r.p90_ms,
                    "stillOpen": r.still_open,
                    "escalated": r.escalated,
                })
            })
            .collect();
        json!({
            "from": self.from,
            "to": self.to,
            "severity": self.severity,
            "groupBy": self.group_by.as_str(),
            "rows": rows,
        })
    }

    /// The rows as RFC 4180 CSV, times in milliseconds.
    pub fn to_csv(&self) -> Vec<u8> {
        let mut writer = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(Vec::new());
        let header = [
            "from",
            "to",
            self.group_by.as_str(),
            "count",
            "acknowledged",
            "acknowledgedWithinDeadline",
            "acknowledgedWithinDeadlinePercent",
            "medianTimeToAcknowledgeMs",
            "p90TimeToAcknowledgeMs",
            "stillOpen",
            "escalated",
        ];
        writer.write_record(header).expect("writing to memory");
        let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
        for r in &self.rows {
            writer
                .write_record([
                    self.from.to_string(),
                    self.to.to_string(),
                    r.group.clone(),
                    r.count.to_string(),
                    r.acknowledged.to_string(),
                    r.within_deadline.to_string(),
                    percent(r.within_deadline, r.count)
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    opt(r.median_ms),
                    opt(r.p90_ms),
                    r.still_open.to_string(),
                    r.escalated.to_string(),
                ])
                .expect("writing to memory");
        }
        writer.into_inner().expect("flushing to memory")
    }

    /// A fixed-width table for the terminal.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "acknowledgements {} .. {}{} by {}\n\n{:<28} {:>6} {:>6} {:>14} {:>10} {:>10} {:>6} {:>9}\n",
            self.from,
            self.to,
            self.severity
                .map(|s| format!(", severity {s}"))
                .unwrap_or_default(),
            self.group_by.as_str(),
            "group",
            "count",
            "acked",
            "within (%)",
            "median",
            "p90",
            "open",
            "escalated"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<28} {:>6} {:>6} {:>6} ({:>5.1}) {:>10} {:>10} {:>6} {:>9}\n",
                r.group,
                r.count,
                r.acknowledged,
                r.within_deadline,
                percent(r.within_deadline, r.count).unwrap_or(0.0),
                r.median_ms.map_or_else(|| "-".into(), human_ms),
                r.p90_ms.map_or_else(|| "-".into(), human_ms),
                r.still_open,
                r.escalated,
            ));
        }
        out
    }
}

fn percent(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| (part as f64 * 1000.0 / whole as f64).round() / 10.0)
}

fn human_ms(ms: i64) -> String {
    let secs = ms as f64 / 1000.0;
    if secs < 120.0 {
        format!("{secs:.1}s")
    } else if secs < 7200.0 {
        format!("{:.1}m", secs / 60.0)
    } else {
        format!("{:.1}h", secs / 3600.0)
    }
}
