//! What an on-call engineer's Prometheus sees: `/metrics` in both
//! exposition formats, checked by `promtool check metrics` against a daemon
//! that has raised, acknowledged, escalated, emailed and replayed; the
//! figures read from the database (open, overdue, the outbox, whether it
//! answers); the shipped alert rules (`promtool check rules` and their unit
//! tests) and the Grafana dashboard, which may query only metrics that
//! exist.
//!
//! promtool comes from Debian's `prometheus` package (scripts/test.sh
//! installs it). Without it these checks are skipped with a message — but
//! not under `CI`, where its absence fails them.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

both_databases!(
    metrics_after_real_work_pass_promtool_in_both_formats,
    open_overdue_and_outbox_figures_follow_the_database,
);

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The metrics the scheduled jobs export (defined with the `[schedule]`
/// jobs); the alerts and the dashboard may use them too.
const JOB_METRICS: [&str; 4] = [
    "readback_job_runs_total",
    "readback_job_last_success_timestamp_seconds",
    "readback_audit_chain_verified_timestamp_seconds",
    "readback_audit_chain_valid",
];

/// promtool, or `None` (with a message) when it is not installed and this
/// is not CI.
fn promtool() -> Option<&'static str> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return Some("promtool");
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "promtool is not installed (apt-get install prometheus; scripts/test.sh does it)"
    );
    eprintln!(
        "SKIPPED: promtool is not installed (apt-get install prometheus, or run scripts/test.sh)"
    );
    None
}

/// Runs promtool with `args`, `stdin` on its standard input; its exit code
/// and what it printed.
fn run_promtool(promtool: &str, args: &[&str], stdin: &str) -> (Option<i32>, String) {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `/metrics` fetched with `accept`: its content type and body.
async fn scrape(daemon: &Daemon, accept: Option<&str>) -> (String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/metrics", daemon.url));
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let response = request.send().await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (content_type, response.text().await.expect("metrics body"))
}

/// The value of one series (`name{labels}` exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Waits until `series` has a value that `wanted` accepts; the last body.
async fn wait_sample(daemon: &Daemon, series: &str, wanted: impl Fn(f64) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, text) = scrape(daemon, None).await;
        if sample(&text, series).is_some_and(&wanted) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {series}: {:?} in\n{text}",
            sample(&text, series)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_sample(text: &str, series: &str, wanted: impl Fn(f64) -> bool) {
    let value = sample(text, series);
    assert!(
        value.is_some_and(wanted),
        "{series} is {value:?} in:\n{text}"
    );
}

/// One critical finding for someone offline escalates at once and its
/// email is sent; one is acknowledged; one waits to be replayed on connect.
/// Every family then has samples, and both formats pass their checks.
async fn metrics_after_real_work_pass_promtool_in_both_formats(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n[scheduler]\ntick = \"100ms\"\n\n[escalation]\nescalate_when_offline = true\n\n\
             [[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n",
            smtp.config()
        ),
    )
    .await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    let http = Http::default();

    // Acknowledged within seconds.
    clients
        .connect("alice", &token("alice", &["radiologist"], None))
        .await;
    let acknowledged = http
        .raise(&daemon, json!({ "userId": "alice" }), "acknowledged")
        .await;
    clients
        .ack("alice", acknowledged["id"].as_str().unwrap())
        .await;
    // Nobody online: escalated at once, one email.
    http.raise(&daemon, json!({ "userId": "bob" }), "escalated")
        .await;
    smtp.wait_for(1).await;
    // Waiting for carol, replayed when she connects.
    http.raise_with(
        &daemon,
        &json!({ "recipient": { "userId": "carol" }, "severity": "urgent", "title": "replayed" }),
    )
    .await;
    clients
        .connect("carol", &token("carol", &["radiologist"], None))
        .await;
    clients.next_event("carol", "critical_notification").await;

    let text = wait_sample(
        &daemon,
        "readback_outbox_attempts_total{channel=\"email\",outcome=\"sent\"}",
        |v| v >= 1.0,
    )
    .await;
    for (series, expected) in [
        (
            "readback_notifications_raised_total{severity=\"critical\"}",
            2.0,
        ),
        ("readback_acknowledgements_total", 1.0),
        (
            "readback_time_to_acknowledge_seconds_count{severity=\"critical\"}",
            1.0,
        ),
        ("readback_raise_commit_duration_seconds_count", 3.0),
        ("readback_escalations_total{level=\"1\"}", 1.0),
        (
            "readback_outbox_attempts_total{channel=\"email\",outcome=\"failed\"}",
            0.0,
        ),
        ("readback_notifications_open{severity=\"critical\"}", 1.0),
        ("readback_notifications_open{severity=\"urgent\"}", 1.0),
        ("readback_notifications_open{severity=\"actionable\"}", 0.0),
        ("readback_notifications_overdue{severity=\"critical\"}", 0.0),
        ("readback_outbox_pending{channel=\"email\"}", 0.0),
        ("readback_database_up", 1.0),
        ("readback_connected_sockets", 2.0),
    ] {
        assert_sample(&text, series, |v| v == expected);
    }
    // alice connected to nothing, carol to one.
    assert_sample(&text, "readback_replay_notifications_count", |v| v >= 2.0);
    assert_sample(&text, "readback_replay_notifications_sum", |v| v >= 1.0);
    assert_sample(
        &text,
        "readback_notifications_oldest_open_age_seconds{severity=\"critical\"}",
        |v| v > 0.0,
    );
    assert_sample(
        &text,
        "readback_scheduler_pass_duration_seconds_count",
        |v| v >= 1.0,
    );
    assert_sample(&text, "readback_scheduler_tick_lag_seconds_count", |v| {
        v >= 1.0
    });
    // The daemon runs on this machine's clock.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_sample(
        &text,
        "readback_scheduler_last_tick_timestamp_seconds",
        |v| (now - v).abs() < 30.0,
    );

    // Without an Accept header: the Prometheus text format, as labelled.
    let (content_type, text) = scrape(&daemon, None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(!text.contains("# UNIT"), "{text}");
    assert!(text.contains("# TYPE readback_acknowledgements_total counter\n"));
    // What Prometheus asks for: OpenMetrics, ending in `# EOF`.
    let (content_type, openmetrics) = scrape(&daemon, Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("\n# EOF\n"), "{openmetrics}");
    assert_eq!(openmetrics.matches("# EOF").count(), 1);
    assert!(openmetrics.contains("# TYPE readback_acknowledgements counter\n"));
    assert!(openmetrics.contains("\nreadback_acknowledgements_total 1\n"));

    let Some(promtool) = promtool() else { return };
    let (code, output) = run_promtool(promtool, &["check", "metrics"], &text);
    assert_eq!(
        code,
        Some(0),
        "promtool check metrics:\n{output}\non:\n{text}"
    );
}

/// Open and overdue counts, the oldest open finding and the outbox are the
/// database's figures at each scrape: a finding past its deadline counts as
/// overdue, an email that cannot be sent (no `smtp.url`) waits and ages,
/// an acknowledgement takes the finding out again.
async fn open_overdue_and_outbox_figures_follow_the_database(db: Db) {
    let env = TestEnv::with_config(
        db,
        "[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n",
    )
    .await;
    let daemon = env.start().await;
    let http = Http::default();
    let raised = http
        .raise_with(
            &daemon,
            &json!({ "recipient": { "userId": "dave" }, "severity": "critical", "title": "late", "ackWithin": 1000 }),
        )
        .await;
    let (_, text) = scrape(&daemon, None).await;
    assert_sample(
        &text,
        "readback_notifications_open{severity=\"critical\"}",
        |v| v == 1.0,
    );
    assert_sample(
        &text,
        "readback_notifications_overdue{severity=\"critical\"}",
        |v| v == 0.0,
    );
    assert_sample(&text, "readback_outbox_pending{channel=\"email\"}", |v| {
        v == 0.0
    });

    // Past the deadline: overdue, escalated, its email waiting.
    let text = wait_sample(&daemon, "readback_outbox_pending{channel=\"email\"}", |v| {
        v == 1.0
    })
    .await;
    assert_sample(
        &text,
        "readback_notifications_overdue{severity=\"critical\"}",
        |v| v == 1.0,
    );
    assert_sample(
        &text,
        "readback_notifications_oldest_open_age_seconds{severity=\"critical\"}",
        |v| v >= 1.0,
    );
    assert_sample(&text, "readback_escalations_total{level=\"1\"}", |v| {
        v == 1.0
    });
    let first_age = sample(
        &text,
        "readback_outbox_oldest_pending_age_seconds{channel=\"email\"}",
    )
    .unwrap();
    let text = wait_sample(
        &daemon,
        "readback_outbox_oldest_pending_age_seconds{channel=\"email\"}",
        |v| v >= first_age + 0.5,
    )
    .await;
    assert_sample(&text, "readback_outbox_pending{channel=\"email\"}", |v| {
        v == 1.0
    });

    let clients = Clients::start(&daemon).await;
    clients
        .connect("dave", &token("dave", &["radiologist"], None))
        .await;
    clients.ack("dave", raised["id"].as_str().unwrap()).await;
    let (_, text) = scrape(&daemon, None).await;
    assert_sample(
        &text,
        "readback_notifications_open{severity=\"critical\"}",
        |v| v == 0.0,
    );
    assert_sample(
        &text,
        "readback_notifications_overdue{severity=\"critical\"}",
        |v| v == 0.0,
    );
    assert_sample(
        &text,
        "readback_notifications_oldest_open_age_seconds{severity=\"critical\"}",
        |v| v == 0.0,
    );
    assert_sample(
        &text,
        "readback_time_to_acknowledge_seconds_count{severity=\"critical\"}",
        |v| v == 1.0,
    );
}

/// A database that stops answering: `readback_database_up` is 0, the
/// figures read from it are withdrawn rather than left stale, and the
/// errors are counted; when it is back, so are they.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_database_shows_as_down_and_its_figures_are_withdrawn() {
    use sqlx::Executor;
    let env = TestEnv::new(Db::Postgres).await;
    let daemon = env.start().await;
    let (_, text) = scrape(&daemon, None).await;
    assert_sample(&text, "readback_database_up", |v| v == 1.0);
    assert_sample(
        &text,
        "readback_notifications_open{severity=\"critical\"}",
        |v| v == 0.0,
    );
    let database = env
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let mut admin = postgres_admin().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
        )))
        .await
        .unwrap();
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )))
        .await
        .unwrap();

    let text = wait_sample(&daemon, "readback_database_up", |v| v == 0.0).await;
    assert_eq!(
        sample(&text, "readback_notifications_open{severity=\"critical\"}"),
        None,
        "a figure the database did not give is withdrawn:\n{text}"
    );
    assert_eq!(
        sample(&text, "readback_outbox_pending{channel=\"email\"}"),
        None
    );
    let errors = sample(
        &text,
        "readback_database_errors_total{kind=\"unavailable\"}",
    )
    .unwrap()
        + sample(&text, "readback_database_errors_total{kind=\"query\"}").unwrap();
    assert!(errors >= 1.0, "{text}");

    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE {database} ALLOW_CONNECTIONS true"
        )))
        .await
        .unwrap();
    let text = wait_sample(&daemon, "readback_database_up", |v| v == 1.0).await;
    assert_sample(
        &text,
        "readback_notifications_open{severity=\"critical\"}",
        |v| v == 0.0,
    );
}

/// The shipped rules load, and each alert fires on its condition and not
/// otherwise (docs/alerts.test.yml).
#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let (code, output) = run_promtool(promtool, &["check", "rules", "docs/alerts.yml"], "");
    assert_eq!(code, Some(0), "promtool check rules:\n{output}");
    let (code, output) = run_promtool(promtool, &["test", "rules", "docs/alerts.test.yml"], "");
    assert_eq!(code, Some(0), "promtool test rules:\n{output}");
    // Every alert the rules define has a test.
    let rules = read_doc("docs/alerts.yml");
    let tests = read_doc("docs/alerts.test.yml");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "{alert} has no test in docs/alerts.test.yml"
        );
    }
}

/// The dashboard is well-formed JSON, and it and the alert rules query
/// only metrics a daemon exports (or the scheduled jobs' metrics); the
/// dashboard covers what the alerts watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    // With an escalation level, as every real configuration has.
    let env = TestEnv::with_config(
        Db::Sqlite,
        "[[escalation.levels]]\nafter = \"0s\"\nto = [\"oncall@hospital.example\"]\n",
    )
    .await;
    let daemon = env.start().await;
    let (_, text) = scrape(&daemon, None).await;
    let mut exported: BTreeSet<String> = JOB_METRICS.iter().map(ToString::to_string).collect();
    for line in text.lines() {
        if let Some((name, kind)) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_once(' '))
        {
            exported.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
    }

    let dashboard: Value = serde_json::from_str(&read_doc("docs/grafana-dashboard.json"))
        .expect("docs/grafana-dashboard.json is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "a dashboard with panels"
    );
    let mut queries = Vec::new();
    collect_queries(&dashboard, &mut queries);
    let in_dashboard: BTreeSet<String> = queries
        .iter()
        .map(String::as_str)
        .flat_map(metric_names)
        .collect();
    let unknown: Vec<_> = in_dashboard.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nothing exports: {unknown:?}"
    );
    let in_rules = metric_names(&read_doc("docs/alerts.yml"));
    let unknown: Vec<_> = in_rules.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the alert rules use metrics nothing exports: {unknown:?}"
    );
    for watched in &in_rules {
        assert!(
            in_dashboard.contains(watched),
            "the dashboard does not show {watched}, which an alert watches"
        );
    }
}

fn read_doc(path: &str) -> String {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of a dashboard: panel targets and template
/// variables.
fn collect_queries(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", Value::String(expr)) => out.push(expr.clone()),
                    ("query", Value::String(query)) => out.push(query.clone()),
                    ("query", Value::Object(query)) => {
                        if let Some(Value::String(q)) = query.get("query") {
                            out.push(q.clone());
                        }
                    }
                    _ => collect_queries(value, out),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_queries(item, out);
            }
        }
        _ => {}
    }
}

/// The `readback_…` metric names a text mentions.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = text[from..].find("readback_") {
        let start = from + found;
        let mut end = start;
        while end < bytes.len() && word(bytes[end]) {
            end += 1;
        }
        if start == 0 || !word(bytes[start - 1]) {
            names.insert(text[start..end].to_string());
        }
        from = end;
    }
    names
}
