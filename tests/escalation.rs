//! Escalation by email against a real SMTP server (aiosmtpd). Every story
//! runs on SQLite and PostgreSQL.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use sqlx::{Executor, Row};

/// Level 1 at the deadline to the recipient and the on-call; level 2 two
/// seconds later to the chief.
fn policy(smtp: &SmtpServer) -> String {
    format!(
        "{}\n[scheduler]\ntick = \"100ms\"\n\n[escalation]\nlink_template = \"https://pacs.hospital.example/worklist?readback={{reference}}\"\n\n\
         [[escalation.levels]]\nafter = \"0s\"\nto = [\"recipient\", \"oncall@hospital.example\"]\n\n\
         [[escalation.levels]]\nafter = \"2s\"\nto = [\"chief@hospital.example\"]\n",
        smtp.config()
    )
}

both_databases!(
    two_levels_send_one_email_per_level_and_address_in_order,
    acknowledging_before_the_deadline_sends_nothing,
    acknowledging_between_levels_stops_the_next,
    cancelling_stops_escalation,
    an_smtp_outage_delays_but_loses_nothing,
    a_crash_between_levels_neither_repeats_nor_skips,
    a_permanent_refusal_is_recorded_and_not_retried,
    a_crash_after_the_servers_250_resends_with_the_same_message_id,
    a_crash_before_the_server_accepts_sends_after_the_lease,
    a_server_that_stops_answering_is_cut_off_after_the_timeout,
);

/// Raises for alice (whose e-mail the daemon learnt from her token) with a
/// 1 s deadline and PHI in every field.
async fn raise_for_alice(daemon: &Daemon, clients: &Clients) -> Value {
    clients
        .connect(
            "alice",
            &token_with_email("alice", &["radiologist"], "alice@hospital.example"),
        )
        .await;
    clients.close("alice").await;
    Http::default()
        .raise_with(
            daemon,
            &json!({
                "recipient": { "userId": "alice" },
                "severity": "critical",
                "title": "Critical Finding Detected",
                "message": "Left tension pneumothorax",
                "patientId": "PAT-4711",
                "studyId": "STUDY-0815",
                "accessionNumber": "ACC-1234",
                "ackWithin": 1000,
            }),
        )
        .await
}

fn to_of(mails: &[Mail]) -> Vec<String> {
    let mut to: Vec<String> = mails.iter().map(|m| m.to.clone()).collect();
    to.sort();
    to
}

async fn two_levels_send_one_email_per_level_and_address_in_order(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised_at = Instant::now();
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();
    let reference = raised["reference"].as_str().unwrap();

    let level1 = smtp.wait_for(2).await;
    let after_level1 = raised_at.elapsed();
    assert_eq!(
        to_of(&level1),
        ["alice@hospital.example", "oncall@hospital.example"]
    );
    assert!(
        after_level1 >= Duration::from_millis(1000),
        "{after_level1:?}"
    );
    let all = smtp.wait_for(3).await;
    let after_level2 = raised_at.elapsed();
    assert!(
        after_level2 >= Duration::from_millis(3000),
        "{after_level2:?}"
    );
    assert!(
        after_level2 <= Duration::from_millis(4500),
        "{after_level2:?}"
    );
    let chief: Vec<_> = all
        .iter()
        .filter(|m| m.to == "chief@hospital.example")
        .collect();
    assert_eq!(chief.len(), 1);

    for mail in &all {
        assert!(mail.subject.contains(reference), "{}", mail.subject);
        assert!(
            mail.message_id.starts_with(&format!("<{reference}.")),
            "{}",
            mail.message_id
        );
        for phi in ["PAT-4711", "STUDY-0815", "ACC-1234", "pneumothorax"] {
            assert!(!mail.raw.contains(phi), "{phi} in {}", mail.raw);
        }
        assert!(
            mail.raw
                .contains("https://pacs.hospital.example/worklist?readback=")
        );
    }
    // A few more ticks: nothing else is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 3);

    let stored = Http::default()
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "escalated");
    let steps = stored.body["escalations"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{}", stored.body);
    assert_eq!(steps[0]["level"], 1);
    assert_eq!(steps[1]["addresses"], json!(["chief@hospital.example"]));
    let emails = stored.body["emails"].as_array().unwrap();
    assert!(
        emails.iter().all(|e| e["state"] == "sent"),
        "{}",
        stored.body
    );
    assert_eq!(
        env.audit_count(Audit::action("notification.escalated").notification(id))
            .await,
        2
    );
    assert_eq!(
        env.audit_count(Audit::action("email.sent").notification(id))
            .await,
        3
    );
}

async fn acknowledging_before_the_deadline_sends_nothing(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();
    clients
        .connect("alice2", &token("alice", &["radiologist"], None))
        .await;
    assert_eq!(clients.ack("alice2", id).await["ok"], true);

    // Past the deadline and a few ticks: the step is stopped, not sent.
    env.wait_count(
        "SELECT COUNT(*) FROM escalation_steps WHERE state = 'stopped' AND notification_id = $1",
        id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.mails().is_empty());
    assert_eq!(
        env.audit_count(Audit::action("notification.escalated").notification(id))
            .await,
        0
    );
}

async fn acknowledging_between_levels_stops_the_next(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();
    smtp.wait_for(2).await;
    clients
        .connect("alice2", &token("alice", &["radiologist"], None))
        .await;
    assert_eq!(clients.ack("alice2", id).await["ok"], true);

    // Level 2 would be due 2 s after level 1; wait until the scheduler has
    // stopped it.
    env.wait_count(
        "SELECT COUNT(*) FROM escalation_steps WHERE state = 'stopped' AND notification_id = $1",
        id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(smtp.mails().len(), 2);
    let stored = Http::default()
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    assert_eq!(stored.body["state"], "acknowledged");
    assert_eq!(stored.body["escalations"].as_array().unwrap().len(), 1);
}

async fn cancelling_stops_escalation(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();
    let cancelled = Http::default()
        .post(
            &daemon.api(&format!("/notifications/{id}/cancel")),
            &service_token(),
            &json!({ "reason": "retracted" }),
        )
        .await;
    assert_eq!(cancelled.status, 200);
    env.wait_count(
        "SELECT COUNT(*) FROM escalation_steps WHERE state = 'stopped' AND notification_id = $1",
        id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(smtp.mails().is_empty());
}

async fn an_smtp_outage_delays_but_loses_nothing(db: Db) {
    let mut smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    smtp.stop().await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();

    // Level 1 falls due while the server is down: failures are audited.
    env.wait_audit(
        Audit::action("email.failed")
            .outcome("retry")
            .notification(id),
        4,
    )
    .await;
    assert!(smtp.mails().is_empty());
    smtp.resume().await;

    let mails = smtp.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails_after = smtp.mails();
    assert_eq!(mails_after.len(), 3, "{mails:#?}");
    let mut ids: Vec<_> = mails_after.iter().map(|m| m.message_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3, "each email once");
    assert_eq!(
        to_of(&mails_after),
        [
            "alice@hospital.example",
            "chief@hospital.example",
            "oncall@hospital.example"
        ]
    );
    assert_eq!(
        env.audit_count(Audit::action("email.sent").notification(id))
            .await,
        3
    );
}

async fn a_crash_between_levels_neither_repeats_nor_skips(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(db, &policy(&smtp)).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap().to_string();
    smtp.wait_for(2).await;
    // Wait until both level-1 emails are recorded as sent, then crash.
    env.wait_count(
        "SELECT COUNT(*) FROM email_outbox WHERE state = 'sent' AND notification_id = $1",
        &id,
        2,
    )
    .await;
    drop(clients);
    daemon.kill9().await;

    let _daemon = env.start().await;
    let mails = smtp.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 3, "{mails:#?}");
    assert_eq!(
        smtp.mails()
            .iter()
            .filter(|m| m.to == "chief@hospital.example")
            .count(),
        1
    );
}

/// Three daemons on one PostgreSQL: each step and each email once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_send_each_email_once() {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(Db::Postgres, &policy(&smtp)).await;
    let a = env.start().await;
    let _b = env.start().await;
    let _c = env.start().await;
    let clients = Clients::start(&a).await;
    for _ in 0..3 {
        raise_for_alice(&a, &clients).await;
    }
    smtp.wait_for(9).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mails = smtp.mails();
    assert_eq!(mails.len(), 9, "{mails:#?}");
    let mut ids: Vec<_> = mails.iter().map(|m| m.message_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9);
}

async fn a_permanent_refusal_is_recorded_and_not_retried(db: Db) {
    let smtp = SmtpServer::start().await;
    let config = format!(
        "{}\n[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\n\
         to = [\"reject-me@hospital.example\", \"oncall@hospital.example\"]\n",
        smtp.config()
    );
    let env = TestEnv::with_config(db, &config).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let raised = raise_for_alice(&daemon, &clients).await;
    let id = raised["id"].as_str().unwrap();
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, "oncall@hospital.example");
    env.wait_count(
        "SELECT COUNT(*) FROM email_outbox WHERE state = 'failed' AND notification_id = $1",
        id,
        1,
    )
    .await;
    // Several retry periods later: still one attempt, one failure row.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stored = Http::default()
        .get(
            &daemon.api(&format!("/notifications/{id}")),
            &service_token(),
        )
        .await;
    let refused: Vec<&Value> = stored.body["emails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["address"] == "reject-me@hospital.example")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["state"], "failed");
    assert_eq!(refused[0]["attempts"], 1);
    assert!(
        refused[0]["lastError"].as_str().unwrap().contains("550"),
        "{}",
        refused[0]
    );
    assert_eq!(
        env.audit_count(
            Audit::action("email.failed")
                .outcome("failed")
                .notification(id)
        )
        .await,
        1
    );
    assert_eq!(smtp.mails().len(), 1);
}

/// One level, at the deadline, to `to` only; the daemons log at debug
/// level to files in the returned directory.
async fn one_level_logging(db: Db, smtp: &SmtpServer, to: &str) -> (TestEnv, PathBuf) {
    let mut env = TestEnv::with_config(
        db,
        &format!(
            "{}\n[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\nto = [\"{to}\"]\n",
            smtp.config()
        ),
    )
    .await;
    let logs = env.dir.path().join("logs");
    env.logging = format!("dir = \"{}\"\nrotation = \"never\"\n", logs.display());
    (env, logs)
}

/// Raises a notification due in one second; its id.
async fn raise_due_in_a_second(daemon: &Daemon) -> String {
    let raised = Http::default()
        .raise_with(
            daemon,
            &json!({
                "recipient": { "userId": "alice" },
                "severity": "critical",
                "title": "Critical Finding Detected",
                "ackWithin": 1000,
            }),
        )
        .await;
    raised["id"].as_str().unwrap().to_string()
}

/// The outbox row of a notification's only email: (state, attempts).
#[allow(clippy::disallowed_methods)] // assertions read what the daemon stored
async fn outbox_row(conn: &mut sqlx::AnyConnection, id: &str) -> (String, i64) {
    let row = sqlx::query("SELECT state, attempts FROM email_outbox WHERE notification_id = $1")
        .bind(id.to_string())
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Once the outbox records the email sent, and a moment later (for a
/// duplicate to show): the server holds `mails` copies, the outbox row took
/// two attempts, and the audit log has it sent once.
async fn sent_once_on_the_second_attempt(env: &TestEnv, smtp: &SmtpServer, id: &str, mails: usize) {
    env.wait_count(
        "SELECT COUNT(*) FROM email_outbox WHERE state = 'sent' AND notification_id = $1",
        id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), mails);
    assert_eq!(
        outbox_row(&mut env.sql().await, id).await,
        ("sent".to_string(), 2)
    );
    assert_eq!(
        env.audit_count(Audit::action("email.sent").notification(id))
            .await,
        1
    );
}

/// The window at-least-once leaves: the server has said `250`, the daemon
/// dies before it records that. The retry carries the same `Message-ID`,
/// and the outbox and audit log then show the email sent once.
async fn a_crash_after_the_servers_250_resends_with_the_same_message_id(db: Db) {
    let smtp = SmtpServer::start().await;
    let (env, logs) = one_level_logging(db, &smtp, "hold-oncall@hospital.example").await;
    let daemon = env.start().await;
    let id = raise_due_in_a_second(&daemon).await;

    // The server has stored the message and holds its 250.
    let first = smtp.wait_for(1).await;
    assert!(
        first[0].message_id.starts_with("<RB-") && first[0].message_id.contains(".1."),
        "{}",
        first[0].message_id
    );
    // Take the database's write lock so the daemon cannot record the send,
    // then let the 250 go.
    let mut lock = env.sql().await;
    match db {
        Db::Sqlite => lock.execute("BEGIN IMMEDIATE").await.unwrap(),
        Db::Postgres => {
            lock.execute("BEGIN").await.unwrap();
            lock.execute("LOCK TABLE email_outbox IN EXCLUSIVE MODE")
                .await
                .unwrap()
        }
    };
    smtp.release_held();
    // The daemon logs this after the 250, before its settle transaction.
    wait_for_log(
        &logs,
        &[
            "accepted by the SMTP server; recording it",
            &first[0].message_id,
        ],
    )
    .await;
    assert_eq!(outbox_row(&mut lock, &id).await, ("sending".to_string(), 1));
    daemon.kill9().await;
    lock.execute("ROLLBACK").await.unwrap();
    drop(lock);
    assert_eq!(
        env.audit_count(Audit::action("email.sent").notification(&id))
            .await,
        0,
        "the crash came before the record"
    );

    // When the lease runs out the restarted daemon sends it again.
    let _daemon = env.start().await;
    let both = smtp.wait_for(2).await;
    assert_eq!(both[0].message_id, both[1].message_id, "{both:#?}");
    assert_eq!(both[0].to, both[1].to);
    sent_once_on_the_second_attempt(&env, &smtp, &id, 2).await;
    assert_eq!(
        env.audit_count(Audit::action("email.failed").notification(&id))
            .await,
        0
    );
}

/// A crash after the claim, before the server accepted anything: nothing
/// is lost, and the email is sent once when the lease runs out.
async fn a_crash_before_the_server_accepts_sends_after_the_lease(db: Db) {
    let smtp = SmtpServer::start().await;
    let (env, _logs) = one_level_logging(db, &smtp, "stall-oncall@hospital.example").await;
    let daemon = env.start().await;
    let id = raise_due_in_a_second(&daemon).await;

    // Claimed; the server holds its answer to RCPT, so nothing is accepted.
    env.wait_count(
        "SELECT COUNT(*) FROM email_outbox WHERE state = 'sending' AND notification_id = $1",
        &id,
        1,
    )
    .await;
    daemon.kill9().await;
    assert!(smtp.mails().is_empty());
    smtp.release_held();

    let _daemon = env.start().await;
    let mails = smtp.wait_for(1).await;
    assert!(mails[0].message_id.starts_with("<RB-") && mails[0].message_id.contains(".1."));
    sent_once_on_the_second_attempt(&env, &smtp, &id, 1).await;
}

/// An SMTP server that stops answering mid-conversation: the attempt is
/// cut off after `smtp.timeout` (lettre alone bounds only the connect) and
/// retried on a fresh connection, and the email then arrives once.
async fn a_server_that_stops_answering_is_cut_off_after_the_timeout(db: Db) {
    let smtp = SmtpServer::start().await;
    let (env, _logs) = one_level_logging(db, &smtp, "stall-oncall@hospital.example").await;
    let daemon = env.start().await;
    let id = raise_due_in_a_second(&daemon).await;

    env.wait_audit(
        Audit::action("email.failed")
            .outcome("retry")
            .detail("%no answer within smtp.timeout (2s)%")
            .notification(&id),
        1,
    )
    .await;
    assert!(smtp.mails().is_empty());
    smtp.release_held();
    let mails = smtp.wait_for(1).await;
    assert!(mails[0].message_id.starts_with("<RB-") && mails[0].message_id.contains(".1."));
    env.wait_count(
        "SELECT COUNT(*) FROM email_outbox WHERE state = 'sent' AND notification_id = $1",
        &id,
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.mails().len(), 1);
}
