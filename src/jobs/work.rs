//! What each calendar job does once its slot is claimed: verify the audit
//! chain, purge settled rows, send the escalation-path test email, the
//! digest of open actionable findings and the compliance report.
//!
//! Owns: each job's work, its email and the detail of its `job.ran` row.
//! Never: claim, audit or count a run (the runner in [`super`] does), or
//! delete anything but what `store::jobs::purge` names — never the audit
//! log, nor a notification or its record.

use chrono::{DateTime, Months, TimeZone};
use serde_json::json;

use super::{Jobs, Outcome};
use crate::audit::review::{self, VerifyError};
use crate::clock::Timestamp;
use crate::config::{Job, ReportPeriod};
use crate::escalation::{MAX_FIELD_CHARS, one_line};
use crate::notifications::Recipient;
use crate::severity::Severity;
use crate::store::reports::GroupBy;
use crate::store::{jobs as sql, notifications as notifications_sql};

/// Findings listed in one digest; the rest are counted.
const DIGEST_LIMIT: u32 = 200;

pub async fn run(jobs: &Jobs, job: Job, slot: Timestamp) -> Outcome {
    match job {
        Job::AuditVerify => audit_verify(jobs).await,
        Job::Retention => retention(jobs).await,
        Job::SmtpTest => smtp_test(jobs, slot).await,
        Job::Digest => digest(jobs, slot).await,
        Job::ComplianceReport => compliance_report(jobs, slot).await,
    }
}

fn ok(detail: serde_json::Value) -> Outcome {
    Outcome {
        detail,
        error: None,
    }
}

fn failed(detail: serde_json::Value, error: String) -> Outcome {
    Outcome {
        detail,
        error: Some(error),
    }
}

/// `readbackd audit verify`'s walk of the whole chain. Tampering sets
/// `readback_audit_chain_valid` to 0; either failure is emailed to
/// `schedule.audit_verify.recipients`.
async fn audit_verify(jobs: &Jobs) -> Outcome {
    let now = || Timestamp::now().as_millis() / 1000;
    match review::verify(&jobs.store, &[]).await {
        Ok(v) => {
            jobs.metrics.audit_chain_checked(true, now());
            ok(json!({
                "rows": v.rows,
                "findings": v.findings,
                "undigested": v.undigested,
                "headSeq": v.head_seq,
                "headHash": v.head_hash,
                "tookMs": v.took.as_millis() as u64,
            }))
        }
        Err(e) => {
            let tampered = matches!(e, VerifyError::Tamper(_));
            if tampered {
                jobs.metrics.audit_chain_checked(false, now());
            }
            let error = e.to_string();
            let recipients = &jobs.config.schedule.audit_verify.recipients;
            let mut detail = json!({ "tampered": tampered });
            if !recipients.is_empty() {
                let body = format!(
                    "The scheduled verification of readback's audit log failed:\n\n  {error}\n\n\
                     {}Run `readbackd audit verify` to see it again, and see \
                     docs/operations.md (\"Scheduled jobs\").\n",
                    if tampered {
                        "The log no longer matches its hash chain: treat it as a security incident.\n\n"
                    } else {
                        "The log could not be read to the end.\n\n"
                    }
                );
                let sent = send(
                    jobs,
                    recipients,
                    "[readback] Audit log verification FAILED",
                    body,
                    None,
                )
                .await;
                detail["emailed"] = json!(sent.is_ok());
                detail["emailError"] = json!(sent.err());
            }
            failed(detail, error)
        }
    }
}

/// Deletes rows settled longer ago than `schedule.retention.max_age`.
async fn retention(jobs: &Jobs) -> Outcome {
    let max_age = jobs.config.schedule.retention_age();
    let before = Timestamp::from_millis(
        Timestamp::now()
            .as_millis()
            .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX)),
    );
    let purged = async {
        let mut tx = jobs.store.begin().await?;
        let purged = sql::purge(&mut tx, before).await?;
        tx.commit().await?;
        Ok::<_, crate::store::StoreError>(purged)
    }
    .await;
    let cutoff =
        json!({ "before": before, "maxAge": humantime::format_duration(max_age).to_string() });
    match purged {
        Ok(p) => ok(json!({
            "before": before,
            "maxAge": cutoff["maxAge"],
            "sessions": p.sessions,
            "outbox": p.outbox,
            "revocations": p.revocations,
            "jobRuns": p.job_runs,
        })),
        Err(e) => failed(cutoff, e.to_string()),
    }
}

/// A test email through the same SMTP relay as escalations, so a broken
/// relay shows before a critical finding needs it.
async fn smtp_test(jobs: &Jobs, slot: Timestamp) -> Outcome {
    let recipients = &jobs.config.schedule.smtp_test.recipients;
    let body = format!(
        "This is readback's scheduled test of the escalation email path ({slot}).\n\n\
         It reached you, so the SMTP relay accepts readback's email. Nothing needs to be done.\n\
         If it stops arriving on schedule, escalations of unacknowledged findings would not \
         arrive either: check [smtp] and the relay.\n"
    );
    let sent = send(
        jobs,
        recipients,
        "[readback] Escalation path test",
        body,
        None,
    )
    .await;
    let detail = json!({ "recipients": recipients });
    match sent {
        Ok(()) => ok(detail),
        Err(e) => failed(detail, e),
    }
}

/// Open `actionable` findings, due first; nothing is sent when there are
/// none. Identifiers follow the escalation emails: readback's reference
/// and the title (unless `escalation.include_title = false`), never patient
/// or study identifiers.
async fn digest(jobs: &Jobs, slot: Timestamp) -> Outcome {
    let open = async {
        let mut conn = jobs.store.conn().await?;
        notifications_sql::open_of_severity(&mut conn, Severity::Actionable.as_str(), DIGEST_LIMIT)
            .await
    }
    .await;
    let (findings, total) = match open {
        Ok(open) => open,
        Err(e) => return failed(json!({}), e.to_string()),
    };
    if total == 0 {
        return ok(json!({ "open": 0, "sent": false }));
    }
    let escalation = &jobs.config.escalation;
    let mut body = format!(
        "{total} actionable finding{} open as of {slot}, due first:\n\n",
        if total == 1 { " is" } else { "s are" }
    );
    for n in &findings {
        let recipient = match &n.recipient {
            Recipient::User(user) => format!("user {}", one_line(user, MAX_FIELD_CHARS)),
            Recipient::Role(role) => format!("role {}", one_line(role, MAX_FIELD_CHARS)),
        };
        body.push_str(&format!(
            "- {reference}  raised {raised}  due {due}  for {recipient}{state}\n",
            reference = n.reference(),
            raised = n.created_at,
            due = n.ack_deadline,
            state = if n.ack_deadline < slot {
                "  OVERDUE"
            } else {
                ""
            },
        ));
        if escalation.include_title {
            body.push_str(&format!("    {}\n", one_line(&n.title, MAX_FIELD_CHARS)));
        }
    }
    if total > findings.len() as i64 {
        body.push_str(&format!(
            "\n... and {} more (GET /api/v1/notifications).\n",
            total - findings.len() as i64
        ));
    }
    let subject = format!("[readback] Open actionable findings: {total}");
    let recipients = &jobs.config.schedule.digest.recipients;
    let detail = json!({ "open": total, "listed": findings.len(), "sent": true });
    match send(jobs, recipients, &subject, body, None).await {
        Ok(()) => ok(detail),
        Err(e) => failed(detail, e),
    }
}

/// The time-to-acknowledge report by severity over the week or month
/// before the slot (in `schedule.timezone`), as text and as a CSV
/// attachment.
async fn compliance_report(jobs: &Jobs, slot: Timestamp) -> Outcome {
    let schedule = &jobs.config.schedule;
    let period = schedule.report_period();
    let from = match schedule.tz() {
        Ok(tz) => period_start(slot, period, tz),
        Err(e) => return failed(json!({}), e),
    };
    let report = match review::report(&jobs.store, from, slot, None, GroupBy::Severity).await {
        Ok(report) => report,
        Err(e) => return failed(json!({}), e.to_string()),
    };
    let name = match period {
        ReportPeriod::Week => "weekly",
        ReportPeriod::Month => "monthly",
    };
    let body = format!(
        "readback's {name} compliance report: critical findings acknowledged within their \
         deadline, time to acknowledge (median, 90th percentile) and escalations, by severity.\n\
         The same figures are attached as CSV.\n\n{}",
        report.to_table()
    );
    let csv = report.to_csv();
    let file = format!(
        "readback-compliance-{}.csv",
        DateTime::from_timestamp_millis(slot.as_millis())
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    );
    let detail = json!({
        "period": name,
        "from": from,
        "to": slot,
        "notifications": report.rows.iter().map(|r| r.count).sum::<i64>(),
    });
    let sent = send(
        jobs,
        &schedule.compliance_report.recipients,
        &format!("[readback] {name} compliance report"),
        body,
        Some((&file, "text/csv; charset=utf-8", csv)),
    )
    .await;
    match sent {
        Ok(()) => ok(detail),
        Err(e) => failed(detail, e),
    }
}

/// The start of the week or month that ends at `slot`, on the same local
/// time of day.
fn period_start<Tz: TimeZone>(slot: Timestamp, period: ReportPeriod, tz: Tz) -> Timestamp {
    let Some(end) = DateTime::from_timestamp_millis(slot.as_millis()) else {
        return slot;
    };
    let end = end.with_timezone(&tz);
    let start = match period {
        ReportPeriod::Week => end.clone().checked_sub_days(chrono::Days::new(7)),
        ReportPeriod::Month => end.clone().checked_sub_months(Months::new(1)),
    };
    start.map_or(slot, |s| Timestamp::from_millis(s.timestamp_millis()))
}

async fn send(
    jobs: &Jobs,
    to: &[String],
    subject: &str,
    body: String,
    attachment: Option<(&str, &str, Vec<u8>)>,
) -> Result<(), String> {
    let Some(mailer) = &jobs.mailer else {
        return Err("smtp.url is not set".into());
    };
    mailer
        .lock()
        .await
        .send_now(to, subject, body, attachment)
        .await
}
