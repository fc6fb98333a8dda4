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

/// Writes the email for `level` of `notification`. Without `include_phi`
/// it carries readback's own reference, the severity, the title (unless
/// `include_title = false`), how long it has waited and a link — never the
/// caller's id (it may embed an accession number or MRN), patient id, study
/// id, accession number or free-text message. Every field is one bounded
/// line: a title with line breaks cannot write lines of its own.
pub fn render(
    notification: &Notification,
    level: u32,
    now: Timestamp,
    config: &EscalationConfig,
) -> EmailContent {
    let reference = notification.reference();
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
        "[readback] Unacknowledged {} finding {reference} (escalation level {level})",
        notification.severity
    );
    let mut body = format!(
        "A {severity} finding has not been acknowledged.\n\n\
         Reference:    {reference}\n\
         Severity:     {severity}\n",
        severity = notification.severity,
    );
    if config.include_title {
        body.push_str(&format!(
            "Title:        {}\n",
            one_line(&notification.title, MAX_FIELD_CHARS)
        ));
    }
    body.push_str(&format!(
        "Raised:       {created} ({waiting} ago)\n\
         Deadline:     {deadline} ({deadline_note})\n\
         Escalation:   level {level}\n",
        created = notification.created_at,
        deadline = notification.ack_deadline,
    ));
    if let Some(template) = &config.link_template {
        let link = template
            .replace("{reference}", &reference.to_string())
            .replace("{id}", &notification.id);
        body.push_str(&format!(
            "\nOpen: {}\n",
            one_line(&link, 2 * MAX_FIELD_CHARS)
        ));
    }
    if config.include_phi {
        let field = |label: &str, value: Option<&str>| {
            value
                .map(|v| format!("{label}{}\n", one_line(v, MAX_FIELD_CHARS)))
                .unwrap_or_default()
        };
        body.push('\n');
        body.push_str(&field("Notification: ", Some(&notification.id)));
        body.push_str(&field("Patient:      ", notification.patient_id.as_deref()));
        body.push_str(&field("Study:        ", notification.study_id.as_deref()));
        body.push_str(&field(
            "Accession:    ",
            notification.accession_number.as_deref(),
        ));
        body.push_str(&field("Message:      ", notification.message.as_deref()));
    }
    body.push_str(
        "\nAcknowledge it in the viewer. This email is sent by readback's escalation policy.\n",
    );
    EmailContent { subject, body }
}

/// The longest a caller's text may run in an email line.
pub const MAX_FIELD_CHARS: usize = 200;

/// `text` as one line of at most `max` characters: line breaks, tabs and
/// other control characters (and Unicode's line and paragraph separators)
/// become spaces, so no field can start a line of its own in the body.
pub fn one_line(text: &str, max: usize) -> String {
    let mut line: String = text
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .take(max + 1)
        .collect();
    if line.chars().count() > max {
        line = line.chars().take(max.saturating_sub(1)).collect();
        line.push('…');
    }
    line
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
/// a reader recognise the repeat. It names the notification by its
/// reference and raise time, never by the caller's id.
pub fn message_id(notification: &Notification, level: u32, address: &str, domain: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(&Sha256::digest(address.as_bytes())[..8]);
    format!(
        "<{}.{}.{level}.{digest}@{domain}>",
        notification.reference(),
        notification.created_at.as_millis()
    )
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
            link_template: Some("https://pacs.example/worklist?n={reference}".into()),
            repeat_every: Some(Duration::from_secs(600)),
            repeat_limit: 3,
            ..EscalationConfig::default()
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
                "id": "ACC-SECRET-ID", "recipient": {"userId": "u"}, "severity": "critical",
                "title": "Critical Finding Detected",
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
            seq: 42,
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
        let message_id = message_id(&n, 1, "a@hospital.example", "hospital.example");
        for secret in ["PAT-SECRET", "STUDY-SECRET", "ACC-SECRET", "pneumothorax"] {
            assert!(
                !plain.body.contains(secret)
                    && !plain.subject.contains(secret)
                    && !message_id.contains(secret),
                "{secret}"
            );
        }
        assert!(plain.subject.contains("RB-42") && plain.body.contains("Reference:    RB-42"));
        assert!(message_id.starts_with("<RB-42.0.1."), "{message_id}");
        assert!(plain.body.contains("Critical Finding Detected"));
        assert!(plain.body.contains("12m ago"));
        assert!(plain.body.contains("https://pacs.example/worklist?n=RB-42"));
        let with_phi = render(&n, 1, Timestamp::from_millis(720_000), &config(true));
        assert!(with_phi.body.contains("PAT-SECRET") && with_phi.body.contains("pneumothorax"));
        assert!(with_phi.body.contains("Notification: ACC-SECRET-ID"));
        let no_title = EscalationConfig {
            include_title: false,
            ..config(false)
        };
        let plain = render(&n, 1, Timestamp::from_millis(720_000), &no_title);
        assert!(
            !plain.body.contains("Critical Finding Detected") && !plain.body.contains("Title:")
        );
    }

    #[test]
    fn no_field_writes_a_line_of_its_own() {
        let mut n = notification();
        n.title = format!(
            "Pneumothorax\r\nOpen: https://evil.example\n\u{2028}Patient: X{}",
            "y".repeat(5000)
        );
        n.message = Some("line one\r\n.\r\nQUIT".into());
        let email = render(&n, 1, Timestamp::from_millis(720_000), &config(true));
        let lines: Vec<&str> = email.body.lines().collect();
        assert!(
            !lines.iter().any(|l| l.starts_with("Open: https://evil")),
            "{}",
            email.body
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("Patient: X")),
            "{}",
            email.body
        );
        assert!(
            !lines.iter().any(|l| *l == "." || *l == "QUIT"),
            "{}",
            email.body
        );
        let title = lines
            .iter()
            .find(|l| l.starts_with("Title:"))
            .expect("title line");
        assert!(
            title.chars().count() < 230 && title.ends_with('…'),
            "{title}"
        );
        assert!(!email.subject.contains('\n') && !email.subject.contains('\r'));
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
