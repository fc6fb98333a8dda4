//! The calendar jobs of `[schedule]` on the real daemon: each job's effect
//! (the email it sends, the rows it purges, its audit row and metrics),
//! each slot run once by two daemons on one PostgreSQL, the latest slot
//! missed while stopped run once at start-up, a job running at SIGTERM
//! finished, and one cut off by a crash retried once its lease ran out.
//! Cron expressions have seconds, so a job fires within a second or two.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

both_databases!(
    audit_verify_is_audited_measured_and_emails_a_failure,
    a_missed_slot_runs_once_after_start,
    a_job_running_at_sigterm_finishes,
    a_job_cut_off_by_a_crash_is_retried_after_its_lease,
    retention_purges_settled_rows_and_never_the_audit_log,
    the_emails_reach_their_recipients,
);

const EVERY_SECOND: &str = "* * * * * *";

/// `[schedule]` in an explicit zone with `jobs` (whole `[schedule.x]`
/// tables) appended.
fn schedule(jobs: &str) -> String {
    format!("[schedule]\ntimezone = \"Europe/Berlin\"\n\n{jobs}\n")
}

fn runs_of(job: &str) -> Audit {
    Audit::action("job.ran").detail(&format!("%\"job\":\"{job}\"%"))
}

async fn metrics(daemon: &Daemon) -> String {
    daemon.metrics_text().await
}

/// The value of the sample whose name and labels are exactly `series`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    })
}

async fn wait_sample(daemon: &Daemon, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = metrics(daemon).await;
        if let Some(value) = sample(&text, series).filter(|v| wanted(*v)) {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {series}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sql(env: &TestEnv, statement: &str) {
    use sqlx::Executor;
    let mut conn = env.sql().await;
    conn.execute(sqlx::AssertSqlSafe(statement.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn drop_audit_guards(env: &TestEnv) {
    match env.db {
        Db::Sqlite => {
            for trigger in ["audit_log_no_update", "audit_log_no_delete"] {
                sql(env, &format!("DROP TRIGGER IF EXISTS {trigger}")).await;
            }
            use sqlx::Row;
            let mut conn = env.sql().await;
            #[allow(clippy::disallowed_methods)]
            let names: Vec<String> = sqlx::query(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'",
            )
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
            for name in names {
                sql(env, &format!("DROP TRIGGER {name}")).await;
            }
        }
        Db::Postgres => sql(env, "ALTER TABLE audit_log DISABLE TRIGGER USER").await,
    }
}

async fn audit_verify_is_audited_measured_and_emails_a_failure(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n{}",
            smtp.config(),
            schedule(&format!(
                "[schedule.audit_verify]\ncron = \"{EVERY_SECOND}\"\nrecipients = [\"security@hospital.example\"]\n"
            ))
        ),
    )
    .await;
    let daemon = env.start().await;
    let http = Http::default();
    for i in 0..3 {
        http.raise(&daemon, json!({ "userId": "alice" }), &format!("n{i}"))
            .await;
    }
    env.wait_audit(runs_of("audit_verify").outcome("ok"), 1)
        .await;
    let started = now_secs() as f64;
    wait_sample(&daemon, "readback_audit_chain_valid", |v| v == 1.0).await;
    let verified = wait_sample(
        &daemon,
        "readback_audit_chain_verified_timestamp_seconds",
        |v| v > 0.0,
    )
    .await;
    assert!((started - verified).abs() < 30.0, "{verified} vs {started}");
    wait_sample(
        &daemon,
        "readback_job_runs_total{name=\"audit_verify\",outcome=\"ok\"}",
        |v| v >= 1.0,
    )
    .await;
    wait_sample(
        &daemon,
        "readback_job_last_success_timestamp_seconds{name=\"audit_verify\"}",
        |v| v > 0.0,
    )
    .await;
    assert!(
        smtp.mails().is_empty(),
        "no email while the chain is intact"
    );

    // Someone with database access edits the first row.
    drop_audit_guards(&env).await;
    sql(
        &env,
        "UPDATE audit_log SET actor_id = 'mallory' WHERE seq = 1",
    )
    .await;
    env.wait_audit(runs_of("audit_verify").outcome("failed"), 1)
        .await;
    wait_sample(&daemon, "readback_audit_chain_valid", |v| v == 0.0).await;
    wait_sample(
        &daemon,
        "readback_job_runs_total{name=\"audit_verify\",outcome=\"failed\"}",
        |v| v >= 1.0,
    )
    .await;
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, "security@hospital.example");
    assert!(mails[0].subject.contains("FAILED"), "{:?}", mails[0]);
    assert!(mails[0].raw.contains("row 1"), "{}", mails[0].raw);
    daemon.terminate().await;
}

async fn a_missed_slot_runs_once_after_start(db: Db) {
    let env = TestEnv::with_config(
        db,
        &schedule(&format!(
            "[schedule.audit_verify]\ncron = \"{EVERY_SECOND}\"\n"
        )),
    )
    .await;
    let daemon = env.start().await;
    env.wait_audit(runs_of("audit_verify"), 1).await;
    daemon.terminate().await;
    let before = env.audit_count(runs_of("audit_verify")).await;
    // While stopped, the once-a-minute slot at second `missed` passes.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let missed_at = now_secs() - 1;
    let cron = format!("{} * * * * *", missed_at.rem_euclid(60));
    let daemon = env
        .start_with_env(&[("READBACK_SCHEDULE__AUDIT_VERIFY__CRON", &cron)])
        .await;
    env.wait_audit(runs_of("audit_verify"), before + 1).await;
    let slot = (missed_at * 1000).to_string();
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM job_runs WHERE job = 'audit_verify' AND CAST(slot AS TEXT) = $1",
            &slot
        )
        .await,
        1,
        "the missed slot {slot} ran"
    );
    // Once: the next slot is a minute away, nothing else runs.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.audit_count(runs_of("audit_verify")).await, before + 1);
    daemon.terminate().await;
    // A fresh database has nothing to catch up on.
    let fresh = TestEnv::new(db).await;
    let daemon = fresh
        .start_with_env(&[("READBACK_SCHEDULE__AUDIT_VERIFY__CRON", &cron)])
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fresh.audit_count(runs_of("audit_verify")).await, 0);
    daemon.terminate().await;
}

/// Each slot of the escalation-path test, on two daemons sharing one
/// PostgreSQL, is claimed, emailed and audited once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_one_postgres_run_each_slot_once() {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        Db::Postgres,
        &format!(
            "{}\n{}",
            smtp.config(),
            schedule(&format!(
                "[schedule.smtp_test]\ncron = \"{EVERY_SECOND}\"\nrecipients = [\"it@hospital.example\"]\n"
            ))
        ),
    )
    .await;
    let (a, b) = (env.start().await, env.start().await);
    env.wait_audit(runs_of("smtp_test"), 4).await;
    let ran = |text: &str| {
        sample(
            text,
            "readback_job_runs_total{name=\"smtp_test\",outcome=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    let (text_a, text_b) = (metrics(&a).await, metrics(&b).await);
    a.terminate().await;
    b.terminate().await;
    let rows = env
        .count("SELECT COUNT(*) FROM job_runs WHERE job = $1", "smtp_test")
        .await;
    let audited = env.audit_count(runs_of("smtp_test").outcome("ok")).await;
    let mails = smtp.mails();
    assert!(rows >= 4);
    assert_eq!(audited, rows, "one job.ran row per slot");
    assert_eq!(mails.len() as i64, rows, "one email per slot");
    let counted = ran(&text_a) + ran(&text_b);
    assert!(
        counted <= rows as f64 && counted >= (rows - 2) as f64,
        "the two daemons ran {counted} runs of {rows} slots"
    );
}

async fn a_job_running_at_sigterm_finishes(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n{}",
            smtp.config(),
            schedule(&format!(
                "[schedule.smtp_test]\ncron = \"{EVERY_SECOND}\"\nrecipients = [\"hold-it@hospital.example\"]\n"
            ))
        ),
    )
    .await;
    let mut daemon = env.start().await;
    // The relay holds its answer to the test email: the job is running.
    env.wait_count(
        "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND finished_at IS NULL",
        "smtp_test",
        1,
    )
    .await;
    daemon.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    smtp.release_held();
    let status = daemon.exits_within(WAIT).await.expect("stopped");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND finished_at IS NULL",
            "smtp_test"
        )
        .await,
        0,
        "every claimed run finished"
    );
    let rows = env
        .count(
            "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND outcome = 'ok'",
            "smtp_test",
        )
        .await;
    assert!(rows >= 1);
    assert_eq!(
        env.audit_count(runs_of("smtp_test").outcome("ok")).await,
        rows
    );
    assert_eq!(smtp.wait_for(rows as usize).await.len() as i64, rows);
}

async fn a_job_cut_off_by_a_crash_is_retried_after_its_lease(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n{}",
            smtp.config(),
            "[schedule]\ntimezone = \"UTC\"\nlease = \"1s\"\n\n[schedule.smtp_test]\n\
             cron = \"*/30 * * * * *\"\nrecipients = [\"hold-it@hospital.example\"]\n"
        ),
    )
    .await;
    // A previous run makes the job's history; the next slot is then cut
    // off mid-send by a crash.
    let daemon = env
        .start_with_env(&[("READBACK_SCHEDULE__SMTP_TEST__CRON", EVERY_SECOND)])
        .await;
    env.wait_count(
        "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND finished_at IS NULL",
        "smtp_test",
        1,
    )
    .await;
    daemon.kill9().await;
    smtp.release_held();
    let unfinished = env
        .count(
            "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND finished_at IS NULL",
            "smtp_test",
        )
        .await;
    assert!(unfinished >= 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Restarted on the half-minute schedule: the unfinished slot is run
    // again once its lease ran out.
    let daemon = env.start().await;
    env.wait_count(
        "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND attempts = 2 AND outcome = 'ok'",
        "smtp_test",
        1,
    )
    .await;
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM job_runs WHERE job = $1 AND finished_at IS NULL",
            "smtp_test"
        )
        .await,
        0
    );
    assert!(
        env.audit_count(runs_of("smtp_test").detail("%\"attempt\":2%"))
            .await
            >= 1
    );
    daemon.terminate().await;
}

async fn retention_purges_settled_rows_and_never_the_audit_log(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n\n{}",
            smtp.config(),
            schedule(
                "[schedule.retention]\ncron = \"*/2 * * * * *\"\nmax_age = \"3s\"\n"
            )
        ),
    )
    .await;
    let daemon = env.start().await;
    // A finding escalated by email: an outbox row, settled once sent.
    let raised = Http::default()
        .raise_with(
            &daemon,
            &json!({
                "recipient": { "userId": "alice" },
                "severity": "critical",
                "title": "Critical Finding Detected",
                "ackWithin": 200,
            }),
        )
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    smtp.wait_for(1).await;
    env.wait_audit("email.sent", 1).await;
    // A session that ended two days ago, and one still going.
    let old = (now_secs() - 2 * 86400) * 1000;
    let later = (now_secs() + 3600) * 1000;
    sql(
        &env,
        &format!(
            "INSERT INTO sessions (id, user_id, state, started_at, last_activity_at, idle_timeout_ms, \
             max_lifetime_ms, warning_before_ms, expires_at, next_due_at, ended_at, end_reason) VALUES \
             ('s-old', 'bob', 'expired', {old}, {old}, 900000, 43200000, 120000, {old}, {old}, {old}, 'idle'), \
             ('s-live', 'carol', 'active', {old}, {later}, 900000, 43200000, 120000, {later}, {later}, NULL, NULL)"
        ),
    )
    .await;
    let audit_rows = env
        .count("SELECT COUNT(*) FROM audit_log WHERE $1 = $1", "x")
        .await;
    env.wait_count(
        "SELECT COUNT(*) FROM audit_log WHERE action = 'job.ran' AND outcome = 'ok' \
         AND detail LIKE $1",
        "%\"outbox\":1%",
        1,
    )
    .await;
    daemon.terminate().await;
    let count = |table: &'static str| {
        let env = &env;
        async move {
            env.count(&format!("SELECT COUNT(*) FROM {table} WHERE $1 = $1"), "x")
                .await
        }
    };
    assert_eq!(count("email_outbox").await, 0, "settled email purged");
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions WHERE id = $1", "s-old")
            .await,
        0
    );
    assert_eq!(
        env.count("SELECT COUNT(*) FROM sessions WHERE id = $1", "s-live")
            .await,
        1
    );
    // The finding, its escalation and the whole audit log stay.
    assert_eq!(
        env.count("SELECT COUNT(*) FROM notifications WHERE id = $1", &id)
            .await,
        1
    );
    assert!(count("escalation_steps").await >= 1);
    assert!(count("audit_log").await > audit_rows);
    let (ok, output) = env.audit_verify();
    assert!(ok, "{output}");
}

async fn the_emails_reach_their_recipients(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n{}",
            smtp.config(),
            schedule(
                "[schedule.smtp_test]\ncron = \"0 0 0 1 1 *\"\nrecipients = [\"it@hospital.example\"]\n\n\
                 [schedule.digest]\ncron = \"0 0 0 1 1 *\"\nrecipients = [\"ward@hospital.example\"]\n\n\
                 [schedule.compliance_report]\ncron = \"0 0 0 1 1 *\"\nperiod = \"week\"\nrecipients = [\"quality@hospital.example\"]\n"
            )
        ),
    )
    .await;
    let daemon = env.start().await;
    let http = Http::default();
    let actionable = http
        .raise_with(
            &daemon,
            &json!({
                "recipient": { "role": "radiologist" },
                "severity": "actionable",
                "title": "Incidental adrenal nodule",
                "patientId": "PAT-4711",
            }),
        )
        .await;
    http.raise(&daemon, json!({ "userId": "alice" }), "Critical one")
        .await;
    daemon.terminate().await;
    // Every job fires each second from now on.
    let every = [
        ("READBACK_SCHEDULE__SMTP_TEST__CRON", EVERY_SECOND),
        ("READBACK_SCHEDULE__DIGEST__CRON", EVERY_SECOND),
        ("READBACK_SCHEDULE__COMPLIANCE_REPORT__CRON", EVERY_SECOND),
    ];
    let daemon = env.start_with_env(&every).await;
    let deadline = std::time::Instant::now() + WAIT;
    let wanted = ["it@", "ward@", "quality@"];
    let mails = loop {
        let mails = smtp.mails();
        if wanted
            .iter()
            .all(|w| mails.iter().any(|m| m.to.starts_with(w)))
        {
            break mails;
        }
        assert!(std::time::Instant::now() < deadline, "{mails:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    daemon.terminate().await;
    let to = |w: &str| mails.iter().find(|m| m.to.starts_with(w)).unwrap();
    assert!(to("it@").subject.contains("Escalation path test"));

    let digest = to("ward@");
    assert_eq!(digest.subject, "[readback] Open actionable findings: 1");
    let reference = actionable["reference"].as_str().unwrap();
    assert!(digest.raw.contains(reference), "{}", digest.raw);
    assert!(digest.raw.contains("Incidental adrenal nodule"));
    assert!(!digest.raw.contains("PAT-4711"), "no patient id by email");

    let report = to("quality@");
    assert!(report.subject.contains("weekly compliance report"));
    assert!(report.raw.contains("text/csv"), "{}", report.raw);
    assert!(
        report.raw.contains("readback-compliance-"),
        "{}",
        report.raw
    );
    let csv = attachment(&report.raw);
    assert!(
        csv.starts_with("from,to,severity,count,acknowledged,acknowledgedWithinDeadline"),
        "{csv}"
    );
    assert!(csv.contains(",actionable,1,0,0,"), "{csv}");
    assert!(csv.contains(",critical,1,0,0,"), "{csv}");
    for job in ["smtp_test", "digest", "compliance_report"] {
        assert!(
            env.audit_count(runs_of(job).outcome("ok")).await >= 1,
            "{job}"
        );
    }
}

/// The attachment of a multipart email, decoded (lettre picks base64 or
/// quoted-printable or 7bit by content).
fn attachment(raw: &str) -> String {
    let raw = raw.replace("\r\n", "\n");
    let part = raw
        .split("Content-Disposition: attachment")
        .nth(1)
        .expect("an attachment");
    let (headers, body) = part.split_once("\n\n").expect("part body");
    let body = body.split("\n--").next().unwrap_or("");
    if headers.contains("base64") {
        use std::io::Read;
        let cleaned: String = body.split_whitespace().collect();
        let mut out = Vec::new();
        base64_decode(&cleaned, &mut out);
        let mut text = String::new();
        out.as_slice().read_to_string(&mut text).unwrap();
        text
    } else {
        body.to_string()
    }
}

fn base64_decode(text: &str, out: &mut Vec<u8>) {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|c| *c != b'=') {
        let value = TABLE.iter().position(|t| *t == c).expect("base64") as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
}

#[test]
fn check_config_refuses_a_bad_zone_cron_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readback.toml");
    std::fs::write(
        &path,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n\n[schedule]\ntimezone = \"Mars/Olympus\"\n\n\
             [schedule.audit_verify]\ncron = \"30 2 * * *\"\n\n\
             [schedule.digest]\nmax_age = \"1d\"\nrecipients = [\"not-an-address\"]\n"
        ),
    )
    .unwrap();
    let (code, output) = readbackd(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{output}");
    for expected in [
        "schedule.timezone: `Mars/Olympus`",
        "schedule.audit_verify.cron: `30 2 * * *`",
        "schedule.digest.max_age: only for schedule.retention",
        "schedule.digest.recipients: `not-an-address`",
        "schedule.digest.recipients: set smtp.url",
    ] {
        assert!(output.contains(expected), "{expected}: {output}");
    }
    std::fs::write(
        &path,
        format!(
            "[auth]\njwt_secret = \"{SECRET}\"\n\n[schedule]\ntimezone = \"Europe/Berlin\"\n\n\
             [schedule.audit_verify]\ncron = \"0 30 2 * * *\"\n"
        ),
    )
    .unwrap();
    let (code, output) = readbackd(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{output}");
}
