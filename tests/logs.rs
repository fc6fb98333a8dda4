//! The daemon's logs as an operator reads them: under systemd, entries in
//! the journal's native protocol, levels as priorities and the ids as
//! journal fields (`journalctl -p err`, `journalctl NOTIFICATION_ID=…`);
//! elsewhere, text without colour codes unless on a terminal.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::process::Command;

both_databases!(
    under_systemd_the_journal_gets_priorities_and_id_fields,
    text_logs_off_a_terminal_have_no_colour_codes,
    a_journal_out_of_reach_falls_back_to_text_unless_asked_for,
);

/// One journal entry: its fields in the order sent.
#[derive(Debug, Clone)]
struct Entry(Vec<(String, Vec<u8>)>);

impl Entry {
    fn get(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    fn message(&self) -> String {
        self.get("MESSAGE").unwrap_or_default()
    }

    fn priority(&self) -> Option<u8> {
        self.get("PRIORITY")?.parse().ok()
    }
}

/// Parses one datagram of journald's native protocol: fields as
/// `NAME=value\n`, or as `NAME\n`, a 64-bit little-endian length, the
/// value and `\n` (for values that may hold a newline).
fn parse(mut data: &[u8]) -> Entry {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data
            .iter()
            .position(|&b| b == b'=' || b == b'\n')
            .expect("a field name ends");
        let name = String::from_utf8_lossy(&data[..end]).into_owned();
        assert!(
            !name.is_empty()
                && !name.starts_with('_')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
            "not a journal field name: {name:?}"
        );
        let rest = &data[end + 1..];
        if data[end] == b'=' {
            let newline = rest
                .iter()
                .position(|&b| b == b'\n')
                .expect("a value ends with a newline");
            fields.push((name, rest[..newline].to_vec()));
            data = &rest[newline + 1..];
        } else {
            let length = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            let value = &rest[8..8 + length];
            assert_eq!(
                rest[8 + length],
                b'\n',
                "{name}: no newline after the value"
            );
            fields.push((name, value.to_vec()));
            data = &rest[8 + length + 1..];
        }
    }
    Entry(fields)
}

/// A journal socket that keeps every datagram sent to it.
struct Journal {
    datagrams: Arc<Mutex<Vec<Vec<u8>>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Journal {
    fn listen(path: &Path) -> Self {
        let socket = tokio::net::UnixDatagram::bind(path).expect("bind the journal socket");
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let kept = datagrams.clone();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0u8; 1 << 20];
            while let Ok(n) = socket.recv(&mut buffer).await {
                // An empty datagram is the client's check that the journal
                // is there; the journal ignores it.
                if n > 0 {
                    kept.lock().unwrap().push(buffer[..n].to_vec());
                }
            }
        });
        Self { datagrams, reader }
    }

    fn entries(&self) -> Vec<Entry> {
        self.datagrams
            .lock()
            .unwrap()
            .iter()
            .map(|d| parse(d))
            .collect()
    }

    async fn wait_for(&self, what: &str, wanted: impl Fn(&Entry) -> bool) -> Entry {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(entry) = self.entries().into_iter().find(&wanted) {
                return entry;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what} in the journal"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Run by `unshare --mount`: the daemon gets a mount namespace of its own
/// where the test's directory `$1` holds `/run/systemd/journal/socket`
/// (mounted on `/run/systemd`, or on `/run` where that is missing), so
/// that the daemon, unchanged, talks to the test's socket where a host
/// has journald's (this machine may have no journald); then it becomes
/// the daemon (`exec`: signals reach it).
const IN_OWN_RUN: &str = r#"if [ -d /run/systemd ]; then mount --bind "$1/systemd" /run/systemd; else mount --bind "$1" /run; fi && exec "$0" serve --config "$2""#;

async fn under_systemd_the_journal_gets_priorities_and_id_fields(db: Db) {
    let env = TestEnv::with_config(db, &short_sessions("100ms")).await;
    let run = env.dir.path().join("run");
    std::fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let journal = Journal::listen(&run.join("systemd/journal/socket"));
    // systemd connects stderr to the journal and names that stream in
    // JOURNAL_STREAM (device:inode): a file stands for it here.
    let stderr_path = env.dir.path().join("stderr");
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let stream = stderr.metadata().unwrap();
    let config = env.write_config();
    let mut command = Command::new("unshare");
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            IN_OWN_RUN,
        ])
        .arg(env!("CARGO_BIN_EXE_readbackd"))
        .arg(&run)
        .arg(&config)
        .env(
            "JOURNAL_STREAM",
            format!("{}:{}", stream.dev(), stream.ino()),
        )
        .stderr(stderr);
    let daemon = Daemon::spawn(command, &config).await;

    let clients = Clients::start(&daemon).await;
    clients
        .connect(
            "viewer",
            &token("alice", &["radiologist"], Some("s-journal")),
        )
        .await;
    let raised = Http::default()
        .raise(&daemon, json!({ "userId": "alice" }), "journald")
        .await;
    let id = raised["id"].as_str().unwrap().to_string();
    clients.ack("viewer", &id).await;

    // `journalctl NOTIFICATION_ID=…`, `USER_ID=…`, `SESSION_ID=…`: the ids
    // under those names, info at the journal's "info" (6).
    let entry = journal
        .wait_for("raised", |e| e.message() == "raised")
        .await;
    assert_eq!(
        entry.get("NOTIFICATION_ID").as_deref(),
        Some(&*id),
        "{entry:?}"
    );
    assert_eq!(entry.priority(), Some(6), "{entry:?}");
    assert_eq!(entry.get("SYSLOG_IDENTIFIER").as_deref(), Some("readbackd"));
    assert_eq!(entry.get("SEVERITY").as_deref(), Some("critical"));
    // The request's span comes along.
    assert!(entry.get("REQUEST_ID").is_some(), "{entry:?}");
    let entry = journal
        .wait_for("acknowledged", |e| e.message() == "acknowledged")
        .await;
    assert_eq!(
        entry.get("NOTIFICATION_ID").as_deref(),
        Some(&*id),
        "{entry:?}"
    );
    assert_eq!(entry.get("USER_ID").as_deref(), Some("alice"), "{entry:?}");
    let entry = journal
        .wait_for("connected", |e| e.message() == "connected")
        .await;
    assert_eq!(entry.get("USER_ID").as_deref(), Some("alice"), "{entry:?}");
    assert!(entry.get("CONNECTION_ID").is_some(), "{entry:?}");
    let entry = journal
        .wait_for("session warned", |e| e.message() == "session warned")
        .await;
    assert_eq!(
        entry.get("SESSION_ID").as_deref(),
        Some("s-journal"),
        "{entry:?}"
    );
    // readback=debug: the scheduler's passes, at "debug" (7).
    journal
        .wait_for("a debug entry", |e| {
            e.message() == "sessions scanned" && e.priority() == Some(7)
        })
        .await;

    // SIGHUP still sets the level: at `info`, no more debug entries.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("level = \"readback=debug,info\"", "level = \"info\""),
    )
    .unwrap();
    daemon.signal("HUP");
    journal
        .wait_for("the reload", |e| {
            e.message().starts_with("configuration reloaded")
        })
        .await;
    let reloaded = journal.entries().len();
    // An error, at the journal's "err" (3): `journalctl -p err` finds it.
    std::fs::write(&config, "[server\nlisten = ").unwrap();
    daemon.signal("HUP");
    let entry = journal
        .wait_for("the refused reload", |e| {
            e.message()
                .starts_with("SIGHUP: the configuration is not valid")
        })
        .await;
    assert_eq!(entry.priority(), Some(3), "{entry:?}");
    assert!(entry.get("ERROR").is_some(), "{entry:?}");
    // Three scheduler ticks at the new level.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<Entry> = journal.entries().split_off(reloaded);
    assert!(
        after.iter().all(|e| e.priority() != Some(7)),
        "debug entries after SIGHUP set `info`: {after:?}"
    );
    clients.close("viewer").await;
    assert!(daemon.terminate().await.success());

    // Every field under its own name (no `F_` prefix), and no colour code
    // in any value (a length of the binary form may well be 27, ESC).
    for entry in journal.entries() {
        assert!(
            entry.0.iter().all(|(name, _)| !name.starts_with("F_")),
            "{entry:?}"
        );
        assert!(
            entry.0.iter().all(|(_, value)| !value.contains(&0x1b)),
            "a colour code sent to the journal: {entry:?}"
        );
    }
    // Everything went to the journal, nothing twice through stderr.
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!stderr.contains("raised"), "{stderr}");
}

async fn text_logs_off_a_terminal_have_no_colour_codes(db: Db) {
    let env = TestEnv::new(db).await;
    let config = env.write_config();
    let stderr_path = env.dir.path().join("stderr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_readbackd"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let daemon = Daemon::spawn(command, &config).await;
    let raised = Http::default()
        .raise(&daemon, json!({ "userId": "alice" }), "plain")
        .await;
    assert!(daemon.terminate().await.success());
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let id = raised["id"].as_str().unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("raised") && l.contains(&format!("notification_id={id}"))),
        "{text}"
    );
    assert!(
        !text.contains('\x1b'),
        "colour codes in a log that is not a terminal:\n{}",
        text.escape_debug()
    );
}

async fn a_journal_out_of_reach_falls_back_to_text_unless_asked_for(db: Db) {
    let mut env = TestEnv::new(db).await;
    // A /run/systemd/journal without a socket in it.
    let run = env.dir.path().join("run");
    std::fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let config = env.write_config();
    let in_own_run = |stderr: std::fs::File, config: &Path| {
        let stream = stderr.metadata().unwrap();
        let mut command = Command::new("unshare");
        command
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                IN_OWN_RUN,
            ])
            .arg(env!("CARGO_BIN_EXE_readbackd"))
            .arg(&run)
            .arg(config)
            .env(
                "JOURNAL_STREAM",
                format!("{}:{}", stream.dev(), stream.ino()),
            )
            .stderr(stderr);
        command
    };

    // `auto`: text on stderr, which systemd keeps anyway, and a warning.
    let stderr_path = env.dir.path().join("stderr");
    let command = in_own_run(std::fs::File::create(&stderr_path).unwrap(), &config);
    let daemon = Daemon::spawn(command, &config).await;
    assert!(daemon.terminate().await.success());
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        text.contains("its socket cannot be reached") && text.contains("listening"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{}", text.escape_debug());

    // `journald` by name: the daemon does not start.
    env.logging = "format = \"journald\"\n".into();
    let config = env.write_config();
    let stderr_path = env.dir.path().join("stderr-journald");
    let mut command = in_own_run(std::fs::File::create(&stderr_path).unwrap(), &config);
    let status = tokio::time::timeout(WAIT, command.status())
        .await
        .expect("readbackd exits")
        .unwrap();
    let text = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!status.success(), "{text}");
    assert!(text.contains("logging.format = \"journald\""), "{text}");
}
