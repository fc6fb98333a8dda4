//! Escalation: who is emailed when a notification is not acknowledged.
//!
//! Owns: planning a notification's escalation steps from the policy in
//! force when it is raised (the plan is stored with it, so a config change
//! never re-sends or skips steps in flight), the content of the email (no
//! patient identifiers unless `escalation.include_phi`), the retry delay,
//! and in [`service`] the scheduler's claim of due steps into the outbox;
//! [`mailer`] sends the outbox.
//! Never: send an email that is not in the outbox first, or keep a timer in
//! memory.

pub mod mailer;
pub mod service;

use std::time::Duration;

use crate::clock::Timestamp;
use crate::config::EscalationConfig;
use crate::notifications::Notification;

/// The literal in `escalation.levels[].to` that means the recipient's e-mail.
pub const RECIPIENT: &str = "recipient";

/// One step of a notification's escalation, as planned at raise time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStep {
    pub level: u32,
    pub due_at: Timestamp,
    pub targets: Vec<String>,
    /// On the last step when the policy repeats it: (interval, repetitions).
    pub repeat: Option<(Duration, u32)>,
}

/// The steps for a notification due at `ack_deadline`: level N is due
/// `levels[N].after` past the deadline.
pub fn plan(config: &EscalationConfig, ack_deadline: Timestamp) -> Vec<PlannedStep> {
    let last = config.levels.len().saturating_sub(1);
    config
        .levels
        .iter()
        .enumerate()
        .map(|(index, level)| PlannedStep {
            level: index as u32 + 1,
            due_at: ack_deadline.plus(level.after),
            targets: level.to.clone(),
            repeat: match config.repeat_every {
                Some(every) if index == last && config.repeat_limit > 0 => {
                    Some((every, config.repeat_limit))
                }
                _ => None,
            },
        })
        .collect()
}

/// Subject and plain-text body of an escalation email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailContent {
    pub subject: String,
    pub body: String,
}

/// Writes the email for `level` of `notification`. Without
/// `include_phi` it carries only the notification id, severity, title, how
/// long it has waited and a link — no patient id, study id, accession
/// number or free-text message.
pub fn render(
    notification: &Notification,
    level: u32,
    now: Timestamp,
    config: &EscalationConfig,
) -> EmailContent {
    let waiting = human_duration(now.millis_since(notification.created_at));
    // Escalation starts before the deadline when the recipient was offline
    // (`escalate_when_offline`).
    let deadline_note = if now >= notification.ack_deadline {
        format!(
            "passed {} ago",
            human_duration(now.millis_since(notification.ack_deadline))
        )
    } else {
        format!(
            "in {}; escalated early because the recipient was not connected",
            human_duration(notification.ack_deadline.millis_since(now))
        )
    };
    let subject = format!(
        "[readback] Unacknowledged {} finding {} (escalation level {level})",
        notification.severity, notification.id
    );
    let mut body = format!(
        "A {severity} finding has not been acknowledged.\n\n\
         Notification: {id}\n\
         Severity:     {severity}\n\
         Title:        {title}\n\
         Raised:       {created} ({waiting} ago)\n\
         Deadline:     {deadline} ({deadline_note})\n\
         Escalation:   level {level}\n",
        severity = notification.severity,
        id = notification.id,
        title = notification.title,
        created = notification.created_at,
        deadline = notification.ack_deadline,
    );
    if let Some(template) = &config.link_template {
        body.push_str(&format!(
            "\nOpen: {}\n",
            template.replace("{id}", &notification.id)
        ));
    }
    if config.include_phi {
        let field = |label: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| format!("{label}{v}\n"))
                .unwrap_or_default()
        };
        body.push('\n');
        body.push_str(&field("Patient:      ", &notification.patient_id));
        body.push_str(&field("Study:        ", &notification.study_id));
        body.push_str(&field("Accession:    ", &notification.accession_number));
        body.push_str(&field("Message:      ", &notification.message));
    }
    body.push_str(
        "\nAcknowledge it in the viewer. This email is sent by readback's escalation policy.\n",
    );
    EmailContent { subject, body }
}

/// `1h 5m`, `12m`, `40s`.
fn human_duration(millis: i64) -> String {
    let secs = (millis.max(0) / 1000) as u64;
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m"),
        _ => format!("{h}h {m}m"),
    }
}

/// Delay before retry number `attempts` (1 = after the first failure):
/// doubling from `base`, capped at `max`.
pub fn retry_delay(attempts: u32, base: Duration, max: Duration) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

/// A stable `Message-ID` for one outbox row — the same for the same
/// notification, level and address — reused on every retry. Delivery is at
/// least once (a crash between the server's `250` and the daemon's record
/// of it sends the email again), so this is what lets a receiving system or
/// a reader recognise the repeat.
pub fn message_id(notification_id: &str, level: u32, address: &str, domain: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(&Sha256::digest(address.as_bytes())[..8]);
    format!("<{notification_id}.{level}.{digest}@{domain}>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::config::EscalationLevelConfig;
    use crate::notifications::{RaiseContext, State, parse_raise};
    use crate::severity::Severity;
    use serde_json::json;

    fn config(include_phi: bool) -> EscalationConfig {
        EscalationConfig {
            levels: vec![
                EscalationLevelConfig {
                    after: Duration::ZERO,
                    to: vec![RECIPIENT.into()],
                },
                EscalationLevelConfig {
                    after: Duration::from_secs(300),
                    to: vec!["chief@hospital.example".into()],
                },
            ],
            include_phi,
            link_template: Some("https://pacs.example/worklist?n={id}".into()),
            repeat_every: Some(Duration::from_secs(600)),
            repeat_limit: 3,
            escalate_when_offline: false,
        }
    }

    fn notification() -> Notification {
        let caller = Identity {
            user_id: "pacs".into(),
            roles: vec!["service".into()],
            session_id: None,
            email: None,
            name: None,
            client_addr: None,
        };
        let new = parse_raise(
            &json!({
                "recipient": {"userId": "u"}, "severity": "critical", "title": "Critical Finding Detected",
                "patientId": "PAT-SECRET", "studyId": "STUDY-SECRET", "accessionNumber": "ACC-SECRET",
                "message": "Tension pneumothorax, left"
            }),
            &RaiseContext {
                caller: &caller,
                idempotency_key: None,
                now: Timestamp::from_millis(0),
                ack_within: &|_| Duration::from_secs(600),
            },
        )
        .unwrap();
        Notification {
            seq: 1,
            id: new.id,
            kind: new.kind,
            severity: Severity::Critical,
            title: new.title,
            message: new.message,
            patient_id: new.patient_id,
            study_id: new.study_id,
            accession_number: new.accession_number,
            recipient: new.recipient,
            created_by: new.created_by,
            created_at: new.created_at,
            ack_deadline: new.ack_deadline,
            state: State::Pending,
            acknowledged_at: None,
            acknowledged_by: None,
            cancelled_at: None,
            cancelled_by: None,
            cancel_reason: None,
            request_hash: new.request_hash,
        }
    }

    #[test]
    fn steps_follow_the_deadline_and_only_the_last_repeats() {
        let steps = plan(&config(false), Timestamp::from_millis(1_000));
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].level, 1);
        assert_eq!(steps[0].due_at, Timestamp::from_millis(1_000));
        assert_eq!(steps[1].due_at, Timestamp::from_millis(301_000));
        assert_eq!(steps[0].repeat, None);
        assert_eq!(steps[1].repeat, Some((Duration::from_secs(600), 3)));
    }

    #[test]
    fn emails_carry_no_phi_unless_configured() {
        let n = notification();
        let plain = render(&n, 1, Timestamp::from_millis(720_000), &config(false));
        for secret in ["PAT-SECRET", "STUDY-SECRET", "ACC-SECRET", "pneumothorax"] {
            assert!(
                !plain.body.contains(secret) && !plain.subject.contains(secret),
                "{secret}"
            );
        }
        assert!(plain.body.contains(&n.id));
        assert!(plain.body.contains("12m ago"));
        assert!(
            plain
                .body
                .contains(&format!("https://pacs.example/worklist?n={}", n.id))
        );
        let with_phi = render(&n, 1, Timestamp::from_millis(720_000), &config(true));
        assert!(with_phi.body.contains("PAT-SECRET") && with_phi.body.contains("pneumothorax"));
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        let base = Duration::from_secs(15);
        let max = Duration::from_secs(600);
        assert_eq!(retry_delay(1, base, max), Duration::from_secs(15));
        assert_eq!(retry_delay(3, base, max), Duration::from_secs(60));
        assert_eq!(retry_delay(40, base, max), max);
    }
}
