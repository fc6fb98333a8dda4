//! The daemon as hospital IT runs it: systemd readiness and watchdog, the
//! unit's hardening, draining on SIGTERM, TLS with certificate reload, log
//! files, and the command line (exit codes, commands that only read, the
//! man page and completions).

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

both_databases!(
    sigterm_during_a_burst_loses_nothing_answered,
    read_only_commands_refuse_a_schema_they_do_not_read_and_never_migrate,
    support_commands_show_send_retry_and_trace,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_follows_the_listener_and_the_watchdog_is_fed() {
    let env = TestEnv::with_config(Db::Sqlite, "[scheduler]\ntick = \"100ms\"\n").await;
    let socket_path = env.dir.path().join("notify.sock");
    let notify = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let daemon = env
        .start_with_env(&[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ])
        .await;
    let mut buffer = vec![0u8; 4096];
    let mut receive = async || -> String {
        let n = tokio::time::timeout(WAIT, notify.recv(&mut buffer))
            .await
            .expect("a notification from readbackd")
            .unwrap();
        String::from_utf8_lossy(&buffer[..n]).to_string()
    };
    let first = receive().await;
    assert!(first.contains("READY=1"), "{first}");
    // At READY the port accepts connections.
    let addr = daemon.url.trim_start_matches("http://").to_string();
    tokio::net::TcpStream::connect(&addr)
        .await
        .expect("port open at READY");

    // Watchdog pings every WATCHDOG_USEC / 2 = 200 ms, with a status line.
    let started = Instant::now();
    let mut pings = 0;
    let mut status = String::new();
    while started.elapsed() < Duration::from_millis(2000) {
        let message = receive().await;
        if message.contains("WATCHDOG=1") {
            pings += 1;
        }
        if let Some(line) = message.lines().find(|l| l.starts_with("STATUS=")) {
            status = line.to_string();
        }
    }
    assert!((6..=14).contains(&pings), "{pings} pings in 2 s");
    assert!(status.contains("serving"), "{status}");

    let exit = daemon.terminate().await;
    assert!(exit.success());
    let mut stopping = false;
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(500), notify.recv(&mut buffer)).await
    {
        stopping |= String::from_utf8_lossy(&buffer[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 on shutdown");
}

async fn sigterm_during_a_burst_loses_nothing_answered(db: Db) {
    let env = TestEnv::new(db).await;
    let daemon = env.start().await;
    let clients = Clients::start(&daemon).await;
    clients
        .connect("viewer", &token("alice", &["radiologist"], None))
        .await;

    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..6 {
        let (answered, count, url) = (
            answered.clone(),
            count.clone(),
            daemon.api("/notifications"),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..200 {
                let id = format!("burst-{worker}-{i}");
                let sent = client
                    .post(&url)
                    .bearer_auth(service_token())
                    .json(&json!({ "id": id, "recipient": { "userId": "alice" }, "severity": "critical", "title": "burst" }))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == 201 => {
                        answered.lock().unwrap().push(id);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused or cut off by the drain: not answered 201.
                    _ => break,
                }
            }
        }));
    }
    while count.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let exit = daemon.terminate().await;
    assert!(exit.success(), "{exit:?}");
    for worker in workers {
        worker.await.unwrap();
    }
    let alert = clients.next_event("viewer", "system_alert").await;
    assert_eq!(alert["reason"], "shutdown");
    assert_eq!(alert["level"], "info");
    clients.wait_disconnect("viewer").await;

    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 60);
    let daemon = env.start().await;
    let http = Http::default();
    for id in &answered {
        let stored = http
            .get(
                &daemon.api(&format!("/notifications/{id}")),
                &service_token(),
            )
            .await;
        assert_eq!(stored.status, 200, "{id} was answered 201 but is gone");
    }
    // Each answered raise has its audit row.
    assert!(env.audit_count("notification.raised").await >= answered.len() as i64);
}

struct Pki {
    ca_pem: String,
    dir: std::path::PathBuf,
}

/// A test CA and a server certificate for localhost/127.0.0.1 signed by
/// it, written as cert.pem/key.pem; returns the certificate's fingerprint.
fn issue(pki: &Pki, ca: &rcgen::Issuer<'_, rcgen::KeyPair>, name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.signed_by(&key, ca).unwrap();
    std::fs::write(pki.dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(pki.dir.join("key.pem"), key.serialize_pem()).unwrap();
    Sha256::digest(cert.der())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_sighup_swaps_the_certificate() {
    let dir = tempfile::tempdir().unwrap().keep();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "readback test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let pki = Pki {
        ca_pem: ca.pem(),
        dir: dir.clone(),
    };
    let first = issue(&pki, &ca, "first");
    let env = TestEnv::with_config(
        Db::Sqlite,
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
    )
    .await;
    let daemon = env.start().await;
    assert!(daemon.url.starts_with("https://"), "{}", daemon.url);
    let port: u16 = daemon.url.rsplit(':').next().unwrap().parse().unwrap();

    let clients = Clients::start(&daemon).await;
    let connected = clients
        .connect_with(
            "secure",
            json!({ "auth": { "token": token("alice", &[], None) }, "ca": pki.ca_pem }),
        )
        .await;
    assert!(connected.is_ok(), "{connected:?}");
    assert_eq!(
        clients.next_event("secure", "connected").await["userId"],
        "alice"
    );
    assert_eq!(clients.peer_certificate(port, &pki.ca_pem).await, first);

    let second = issue(&pki, &ca, "second");
    assert_ne!(first, second);
    daemon.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while clients.peer_certificate(port, &pki.ca_pem).await != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The socket from before the reload is still up.
    clients.barrier("secure").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// A short blocking sleep spaces the old files' modification times, and
// today's file is named by the wall clock.
#[allow(clippy::disallowed_methods)]
async fn logs_go_to_dated_files_and_old_ones_are_pruned() {
    let logs = tempfile::tempdir().unwrap().keep();
    for day in 1..=4 {
        std::fs::write(logs.join(format!("readback.2026-10-0{day}.log")), "old\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(logs.join("unrelated.txt"), "keep me\n").unwrap();
    let mut env = TestEnv::new(Db::Sqlite).await;
    env.log_level = "info".into();
    env.logging = format!("dir = \"{}\"\nretention = 2\n", logs.display());
    let daemon = env.start().await;
    Http::default()
        .raise(&daemon, json!({ "userId": "alice" }), "logged")
        .await;
    assert!(daemon.terminate().await.success());

    let names: HashSet<String> = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let today =
        humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].to_string();
    let current = format!("readback.{today}.log");
    assert!(names.contains(&current), "{names:?}");
    assert!(names.contains("unrelated.txt"));
    let dated: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with("readback."))
        .collect();
    assert_eq!(dated.len(), 2, "retention 2: {names:?}");
    let text = std::fs::read_to_string(logs.join(&current)).unwrap();
    assert!(text.contains("listening"), "{text}");
}

#[test]
fn the_systemd_unit_is_valid_and_hardened() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/readbackd.service");
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (scripts/test.sh installs systemd)");
    let report = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for readbackd.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{report}"));
    assert!(exposure <= 1.5, "exposure {exposure} > 1.5:\n{report}");
    // A memory ceiling: a leak or a flood is stopped before it takes the
    // PACS host's memory.
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("MemoryMax=")),
        "no MemoryMax= in the unit"
    );
    // A configuration error is not restarted in a loop.
    assert!(
        text.lines().any(|l| l == "RestartPreventExitStatus=78"),
        "no RestartPreventExitStatus=78 in the unit"
    );

    // `verify` needs the binary the unit starts: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("readbackd.service");
    let text = std::fs::read_to_string(&unit)
        .unwrap()
        .replace("/usr/bin/readbackd", env!("CARGO_BIN_EXE_readbackd"));
    std::fs::write(&copy, text).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verified.stderr);
    assert!(
        verified.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}

/// The migrations on record in the database: a command that only reads
/// must leave them as they are.
#[allow(clippy::disallowed_methods)] // assertions read what the command left
async fn migrations_on_record(env: &TestEnv) -> Option<i64> {
    use sqlx::Row;
    let mut conn = env.sql().await;
    sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .ok()
        .map(|row| row.get::<i64, _>(0))
}

async fn read_only_commands_refuse_a_schema_they_do_not_read_and_never_migrate(db: Db) {
    let env = TestEnv::new(db).await;
    let config = env.write_config();
    let config = config.to_str().unwrap();
    let read_only: [&[&str]; 2] = [
        &["report", "--config", config],
        &["audit", "verify", "--config", config],
    ];
    if db == Db::Sqlite {
        // No database at the configured path: unavailable, and none is
        // left behind.
        for args in read_only {
            let (code, out) = readbackd(args);
            assert_eq!(code, Some(69), "{args:?}: {out}");
        }
        assert!(!env.dir.path().join("readback.db").exists());
        // An empty SQLite database (a file of zero bytes is one).
        std::fs::write(env.dir.path().join("readback.db"), "").unwrap();
    }
    // A database that was never migrated.
    for args in read_only {
        let (code, out) = readbackd(args);
        assert_eq!(code, Some(78), "{args:?}: {out}");
        assert!(
            out.contains("never migrated") && out.contains("readbackd migrate"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(migrations_on_record(&env).await, None, "nothing migrated");

    // A current database: they work, and the schema is as it was.
    let (code, out) = readbackd(&["migrate", "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    let current = migrations_on_record(&env).await.expect("migrated");
    for args in read_only {
        let (code, out) = readbackd(args);
        assert_eq!(code, Some(0), "{args:?}: {out}");
    }
    assert_eq!(migrations_on_record(&env).await, Some(current));

    // An older database (its last migration not applied): refused, and
    // still older afterwards.
    {
        use sqlx::Executor;
        let mut conn = env.sql().await;
        conn.execute(sqlx::AssertSqlSafe(format!(
            "DELETE FROM _sqlx_migrations WHERE version = {current}"
        )))
        .await
        .unwrap();
    }
    for args in read_only {
        let (code, out) = readbackd(args);
        assert_eq!(code, Some(78), "{args:?}: {out}");
        assert!(
            out.contains(&format!("lacks migration {current}"))
                && out.contains("readbackd migrate"),
            "{args:?}: {out}"
        );
    }
    assert_eq!(migrations_on_record(&env).await, Some(current - 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_tell_a_configuration_error_from_an_unreachable_database() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let secret = format!("[auth]\njwt_secret = \"{SECRET}\"\n");
    // EX_CONFIG: the daemon does not start, and the unit does not restart it.
    let bad = write(
        "bad.toml",
        &format!("{secret}[sessions]\nidle_timout = \"5m\"\n"),
    );
    for command in ["serve", "migrate", "check-config", "report"] {
        let (code, out) = readbackd(&[command, "--config", &bad]);
        assert_eq!(code, Some(78), "{command}: {out}");
        assert!(out.contains("sessions.idle_timout"), "{command}: {out}");
    }
    // EX_UNAVAILABLE: nothing listens on the database's port; the unit
    // restarts it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = write(
        "unreachable.toml",
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{secret}[database]\nurl = \"postgres://readback@127.0.0.1:{port}/readback\"\n"
        ),
    );
    // Each waits out the pool's connect timeout (5 s): all at once.
    let commands: [&[&str]; 4] = [
        &["serve", "--config", &unreachable],
        &["migrate", "--config", &unreachable],
        &["check-config", "--connect", "--config", &unreachable],
        &["audit", "verify", "--config", &unreachable],
    ];
    std::thread::scope(|scope| {
        let runs: Vec<_> = commands
            .iter()
            .map(|args| scope.spawn(move || (args, readbackd(args))))
            .collect();
        for run in runs {
            let (args, (code, out)) = run.join().unwrap();
            assert_eq!(code, Some(69), "{args:?}: {out}");
            assert!(out.contains("database unavailable"), "{args:?}: {out}");
        }
    });
}

#[test]
fn version_man_pages_and_completions_come_from_the_command_line() {
    let (code, out) = readbackd(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        format!("readbackd {}", env!("CARGO_PKG_VERSION"))
    );

    // Without --config (or READBACK_CONFIG), the packaged path.
    let output = Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .arg("check-config")
        .env_remove("READBACK_CONFIG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("/etc/readback/readback.toml"), "{said}");

    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let (code, out) = readbackd(&["generate", "man", man.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let page = std::fs::read_to_string(man.join("readbackd.1")).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH readbackd"),
        "{page}"
    );
    for command in ["serve", "check\\-config", "audit"] {
        assert!(page.contains(command), "readbackd.1 lacks {command}");
    }
    let serve = std::fs::read_to_string(man.join("readbackd-serve.1")).unwrap();
    assert!(serve.contains("/etc/readback/readback.toml"), "{serve}");
    // The packaging command itself is not documented to operators.
    assert!(!page.contains("generate"), "{page}");

    let completions = dir.path().join("completions");
    for (shell, file) in [
        ("bash", "readbackd.bash"),
        ("zsh", "_readbackd"),
        ("fish", "readbackd.fish"),
    ] {
        let (code, out) = readbackd(&[
            "generate",
            "completions",
            shell,
            completions.to_str().unwrap(),
        ]);
        assert_eq!(code, Some(0), "{out}");
        let script = std::fs::read_to_string(completions.join(file)).unwrap();
        assert!(
            script.contains("check-config") && script.contains("timeline"),
            "{shell}: {script}"
        );
    }
}

async fn support_commands_show_send_retry_and_trace(db: Db) {
    let smtp = SmtpServer::start().await;
    let env = TestEnv::with_config(
        db,
        &format!(
            "{}\n[scheduler]\ntick = \"100ms\"\n\n[[escalation.levels]]\nafter = \"0s\"\n\
             to = [\"reject-me@hospital.example\"]\n",
            smtp.config()
        ),
    )
    .await;
    let config = env.write_config();
    let config = config.to_str().unwrap();

    // The configuration in force: overrides and defaults in, secrets out.
    let (code, shown) = readbackd_with_env(
        &["config", "show", "--config", config],
        &[(
            "READBACK_CLUSTER__REDIS_URL",
            "redis://:hunter2@127.0.0.1:6379",
        )],
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(
        !shown.contains(SECRET) && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(shown.contains("REDACTED"), "{shown}");
    assert!(
        shown.contains("redis://:REDACTED@127.0.0.1:6379"),
        "{shown}"
    );
    assert!(
        shown.contains("max_connections"),
        "defaults are shown: {shown}"
    );
    assert!(shown.contains(&env.database_url), "{shown}");

    // A test email through the configured relay, and a refused one.
    let (code, out) = readbackd(&[
        "email",
        "test",
        "--config",
        config,
        "--to",
        "oncall@hospital.example",
    ]);
    assert_eq!(code, Some(0), "{out}");
    let mails = smtp.wait_for(1).await;
    assert_eq!(mails[0].to, "oncall@hospital.example");
    assert_eq!(mails[0].subject, "[readback] Test message");
    let (code, out) = readbackd(&[
        "email",
        "test",
        "--config",
        config,
        "--to",
        "reject-me@hospital.example",
    ]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("550"), "{out}");

    // An escalation email the relay refuses: stuck as failed.
    let daemon = env.start().await;
    let raised = Http::default()
        .raise_with(
            &daemon,
            &json!({ "recipient": { "userId": "alice" }, "severity": "critical", "title": "stuck", "ackWithin": 100 }),
        )
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    let reference = raised["reference"].as_str().unwrap().to_string();
    env.wait_audit(
        Audit::action("email.failed")
            .outcome("failed")
            .notification(&id),
        1,
    )
    .await;
    let (code, listed) = readbackd(&["outbox", "list", "--config", config]);
    assert_eq!(code, Some(0), "{listed}");
    let line = listed
        .lines()
        .find(|l| l.contains("reject-me@hospital.example"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        line.contains("failed") && line.contains(&reference) && line.contains("550"),
        "{line}"
    );
    let (code, listed) = readbackd(&[
        "outbox", "list", "--json", "--state", "failed", "--config", config,
    ]);
    assert_eq!(code, Some(0), "{listed}");
    let rows: Vec<serde_json::Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["attempts"], 1);
    let (_, sent) = readbackd(&[
        "outbox", "list", "--state", "sent", "--json", "--config", config,
    ]);
    assert!(sent.trim().is_empty(), "{sent}");

    // Retried: audited, and the running daemon tries it again.
    let (code, out) = readbackd_with_env(
        &["outbox", "retry", "--failed", "--config", config],
        &[("SUDO_USER", "support-engineer")],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 email due now"), "{out}");
    assert_eq!(
        env.audit_count(
            Audit::action("email.retried")
                .notification(&id)
                .detail("%reject-me@hospital.example%")
        )
        .await,
        1
    );
    assert_eq!(
        env.count(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'email.retried' AND actor_id = $1",
            "support-engineer"
        )
        .await,
        1
    );
    env.wait_audit(
        Audit::action("email.failed")
            .outcome("failed")
            .notification(&id),
        2,
    )
    .await;
    // Nothing left to retry by number either: a sent or unknown row is refused.
    let (code, out) = readbackd(&["outbox", "retry", "999999", "--config", config]);
    assert_eq!(code, Some(1), "{out}");

    // The timeline, by reference and by id.
    let (code, out) = readbackd(&["timeline", &reference, "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    for action in [
        "notification.raised",
        "notification.escalated",
        "email.failed",
        "email.retried",
    ] {
        assert!(out.contains(action), "{action} missing: {out}");
    }
    let (code, out) = readbackd(&["timeline", &id, "--json", "--config", config]);
    assert_eq!(code, Some(0), "{out}");
    let timeline: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(timeline["reference"], json!(reference));
    let stored = env
        .count(
            "SELECT COUNT(*) FROM audit_log WHERE notification_id = $1",
            &id,
        )
        .await;
    assert_eq!(timeline["events"].as_array().unwrap().len() as i64, stored);
    let (code, out) = readbackd(&["timeline", "RB-999999", "--config", config]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("not found"), "{out}");
    assert!(daemon.terminate().await.success());
}
