//! Test harness: the real `readbackd` binary on a free port against a real
//! database (a fresh SQLite file, or a fresh PostgreSQL database), real
//! HTTP, and real Socket.IO clients (the JavaScript `socket.io-client`,
//! driven through `tests/js/driver.mjs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, Notify};

pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long any wait for the daemon or a client may take before the test
/// fails. Waits end as soon as the awaited thing happens.
pub const WAIT: Duration = Duration::from_secs(15);

/// Which database a story runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs each named story (an `async fn(Db)`) once per database.
#[macro_export]
macro_rules! both_databases {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$story($crate::common::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$story($crate::common::Db::Postgres).await
            }
        }
    )*};
}

/// A temporary directory, database and configuration for one test.
pub struct TestEnv {
    pub db: Db,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    extra_config: String,
    /// `logging.level` written to the config file.
    pub log_level: String,
}

impl TestEnv {
    pub async fn new(db: Db) -> Self {
        Self::with_config(db, "").await
    }

    /// `extra` is appended to the generated TOML (whole sections only).
    pub async fn with_config(db: Db, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = match db {
            Db::Sqlite => format!("sqlite://{}/readback.db", dir.path().display()),
            Db::Postgres => fresh_postgres_database().await,
        };
        Self {
            db,
            dir,
            database_url,
            extra_config: extra.to_string(),
            log_level: "readback=debug,info".into(),
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("readback.toml")
    }

    fn write_config(&self) -> PathBuf {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\njwt_secret = \"{SECRET}\"\nleeway = \"0s\"\n\n\
             [database]\nurl = \"{}\"\n\n[logging]\nlevel = \"{}\"\n\n{}\n",
            self.database_url, self.log_level, self.extra_config
        );
        let path = self.config_path();
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub async fn start(&self) -> Daemon {
        Daemon::start(&self.write_config()).await
    }

    pub async fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_with_env(&self.write_config(), env).await
    }

    /// A direct connection to the test database, for assertions on what
    /// was stored.
    pub async fn sql(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// Waits until `sql` (a COUNT with one text parameter) reaches
    /// `at_least`: for what the daemon records just after it answers.
    pub async fn wait_count(&self, sql: &'static str, arg: &str, at_least: i64) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let count = self.count(sql, arg).await;
            if count >= at_least {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out: {sql} ({arg}) is {count}, waited for {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn count(&self, sql: &'static str, arg: &str) -> i64 {
        use sqlx::Row;
        let mut conn = self.sql().await;
        sqlx::query(sql)
            .bind(arg.to_string())
            .fetch_one(&mut conn)
            .await
            .expect("count query")
            .get::<i64, _>(0)
    }
}

/// Creates an empty database on the PostgreSQL named by
/// `READBACK_TEST_POSTGRES_URL` (the test command starts one).
async fn fresh_postgres_database() -> String {
    use sqlx::{Connection, Executor};
    let admin = std::env::var("READBACK_TEST_POSTGRES_URL").expect(
        "READBACK_TEST_POSTGRES_URL is not set: run scripts/test.sh, which starts PostgreSQL",
    );
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL");
    let name = format!("rb_{}", ulid::Ulid::new().to_string().to_lowercase());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').expect("database url with a path").0;
    format!("{base}/{name}")
}

/// The running daemon.
pub struct Daemon {
    child: Child,
    pub url: String,
    config: PathBuf,
}

impl Daemon {
    pub async fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[]).await
    }

    /// Starts with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub async fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_readbackd"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn readbackd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("readbackd listening on ") {
                    return url.to_string();
                }
            }
            panic!("readbackd exited before it was listening");
        })
        .await
        .expect("readbackd did not print its ready line in time");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            config: config.to_path_buf(),
        }
    }

    /// SIGKILL: no drain, no goodbye — a crash.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// The exit status if the daemon exits within `limit`, else `None`.
    pub async fn exits_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait"))
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("readbackd did not stop in time")
            .expect("wait")
    }

    /// Sends a signal (`HUP`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }
}

/// Signs a token the daemon accepts.
pub fn token(user: &str, roles: &[&str], session: Option<&str>) -> String {
    let mut claims = json!({ "sub": user, "roles": roles, "exp": now_secs() + 3600 });
    if let Some(session) = session {
        claims["sessionId"] = json!(session);
    }
    sign(&claims, SECRET)
}

pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn service_token() -> String {
    token("pacs", &["service"], None)
}
pub fn admin_token() -> String {
    token("it-admin", &["admin"], None)
}

/// HTTP helpers over reqwest.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: reqwest::Client::new(),
        }
    }
}

impl Http {
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, url: &str, token: &str) -> Reply {
        self.send(self.client.get(url).bearer_auth(token)).await
    }

    pub async fn post(&self, url: &str, token: &str, body: &Value) -> Reply {
        self.send(self.client.post(url).bearer_auth(token).json(body))
            .await
    }

    pub async fn delete(&self, url: &str, token: &str) -> Reply {
        self.send(self.client.delete(url).bearer_auth(token)).await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Raises a notification for a user and returns the stored body.
    pub async fn raise(&self, daemon: &Daemon, recipient: Value, title: &str) -> Value {
        let reply = self
            .post(
                &daemon.api("/notifications"),
                &service_token(),
                &json!({
                    "recipient": recipient,
                    "severity": "critical",
                    "title": title,
                    "patientId": "patient-789",
                    "studyId": "study-012",
                }),
            )
            .await;
        assert_eq!(reply.status, 201, "raise failed: {}", reply.body);
        reply.body
    }
}

/// Real Socket.IO clients (socket.io-client under Node), many per process.
pub struct Clients {
    child: Child,
    stdin: Mutex<ChildStdin>,
    inbox: Arc<std::sync::Mutex<Vec<Option<Value>>>>,
    arrived: Arc<Notify>,
    next_request: AtomicU64,
    base_url: String,
}

impl Clients {
    pub async fn start(daemon: &Daemon) -> Self {
        let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/driver.mjs");
        assert!(
            driver.with_file_name("node_modules").exists(),
            "tests/js/node_modules is missing: run scripts/test.sh (or npm ci in tests/js)"
        );
        let mut child = Command::new("node")
            .arg(&driver)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn node (is Node.js installed?)");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let inbox = Arc::new(std::sync::Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (inbox_writer, arrived_writer) = (inbox.clone(), arrived.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let message: Value = serde_json::from_str(&line).expect("driver speaks JSON");
                inbox_writer.lock().unwrap().push(Some(message));
                arrived_writer.notify_waiters();
            }
        });
        Self {
            child,
            stdin: Mutex::new(stdin),
            inbox,
            arrived,
            next_request: AtomicU64::new(1),
            base_url: daemon.url.clone(),
        }
    }

    async fn command(&self, command: Value) {
        let mut stdin = self.stdin.lock().await;
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("write to driver");
        stdin.flush().await.expect("flush driver");
    }

    /// Waits for (and consumes) the first message matching `wanted`.
    pub async fn wait_for(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let notified = self.arrived.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(found) = self.take(&wanted) {
                    return found;
                }
                notified.await;
            }
        })
        .await;
        match found {
            Ok(found) => found,
            Err(_) => panic!(
                "timed out waiting for {what}; unconsumed messages: {:#?}",
                self.inbox
                    .lock()
                    .unwrap()
                    .iter()
                    .flatten()
                    .collect::<Vec<_>>()
            ),
        }
    }

    fn take(&self, wanted: &impl Fn(&Value) -> bool) -> Option<Value> {
        let mut inbox = self.inbox.lock().unwrap();
        let slot = inbox
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(wanted))?;
        slot.take()
    }

    /// Connects a socket with the given client options (`auth`, `query`,
    /// `extraHeaders`, `transports`...). Returns the socket id, or the
    /// `connect_error` message.
    pub async fn connect_with(&self, name: &str, options: Value) -> Result<String, String> {
        self.command(
            json!({ "op": "connect", "name": name, "url": self.base_url, "options": options }),
        )
        .await;
        let message = self
            .wait_for(&format!("{name} to connect"), |m| {
                m["name"] == name && (m["type"] == "connect" || m["type"] == "connect_error")
            })
            .await;
        if message["type"] == "connect" {
            Ok(message["id"].as_str().unwrap().to_string())
        } else {
            Err(message["message"].as_str().unwrap_or_default().to_string())
        }
    }

    /// Connects with `auth: { token }` and waits for the `connected` event.
    pub async fn connect(&self, name: &str, token: &str) -> Value {
        self.connect_with(name, json!({ "auth": { "token": token } }))
            .await
            .unwrap_or_else(|e| panic!("{name} could not connect: {e}"));
        self.next_event(name, "connected").await
    }

    /// Connects like a viewer that does not wait: each of `early`
    /// (`(event, args)`) is emitted with an ack before the CONNECT arrives
    /// (socket.io-client flushes them the moment it is connected), and each
    /// of `on_connect` (`{ method, url, token, body? }`) is sent over HTTP
    /// from inside the client's `connect` listener. Returns the acks' answers
    /// and the HTTP replies (`{ status, body }`), in the order given.
    pub async fn connect_eager(
        &self,
        name: &str,
        token: &str,
        early: &[(&str, Value)],
        on_connect: &[Value],
    ) -> (Vec<Value>, Vec<Value>) {
        let mut early_reqs = Vec::new();
        let early: Vec<Value> = early
            .iter()
            .map(|(event, args)| {
                let req = self.next_request.fetch_add(1, Ordering::Relaxed);
                early_reqs.push(req);
                json!({ "event": event, "args": args, "req": req })
            })
            .collect();
        let mut http_reqs = Vec::new();
        let on_connect: Vec<Value> = on_connect
            .iter()
            .map(|request| {
                let req = self.next_request.fetch_add(1, Ordering::Relaxed);
                http_reqs.push(req);
                let mut request = request.clone();
                request["req"] = json!(req);
                request
            })
            .collect();
        self.command(json!({
            "op": "connect", "name": name, "url": self.base_url,
            "options": { "auth": { "token": token } },
            "early": early, "onConnect": on_connect,
        }))
        .await;
        let mut acks = Vec::new();
        for req in early_reqs {
            let answer = self
                .wait_for(&format!("the ack of early emit {req} from {name}"), |m| {
                    m["type"] == "ack" && m["req"] == req
                })
                .await;
            acks.push(match answer.get("error") {
                Some(error) => json!({ "noAnswer": error }),
                None => answer["value"].clone(),
            });
        }
        let mut replies = Vec::new();
        for req in http_reqs {
            let reply = self
                .wait_for(&format!("HTTP request {req} from {name}'s connect"), |m| {
                    m["type"] == "http" && m["req"] == req
                })
                .await;
            replies.push(reply);
        }
        (acks, replies)
    }

    pub async fn emit(&self, name: &str, event: &str, args: Value) {
        self.command(
            json!({ "op": "emit", "name": name, "event": event, "args": args, "ack": false }),
        )
        .await;
    }

    /// Emits with an ack callback and returns the server's answer.
    pub async fn emit_ack(&self, name: &str, event: &str, args: Value) -> Value {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.command(json!({ "op": "emit", "name": name, "event": event, "args": args, "ack": true, "req": request }))
            .await;
        let answer = self
            .wait_for(&format!("the ack of {event} from {name}"), |m| {
                m["type"] == "ack" && m["req"] == request
            })
            .await;
        assert!(answer.get("error").is_none(), "ack failed: {answer}");
        answer["value"].clone()
    }

    pub async fn ack(&self, name: &str, notification_id: &str) -> Value {
        self.emit_ack(
            name,
            "acknowledge_notification",
            json!([{ "notificationId": notification_id }]),
        )
        .await
    }

    /// The next `event` received by socket `name`: its first argument.
    pub async fn next_event(&self, name: &str, event: &str) -> Value {
        let message = self
            .wait_for(&format!("{event} on {name}"), |m| {
                m["type"] == "event" && m["name"] == name && m["event"] == event
            })
            .await;
        message["args"][0].clone()
    }

    /// The SHA-256 fingerprint (Node's `AA:BB:...` form) of the certificate
    /// a new TLS handshake with the daemon sees.
    pub async fn peer_certificate(&self, port: u16, ca_pem: &str) -> String {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        self.command(json!({ "op": "peer_cert", "host": "127.0.0.1", "port": port, "ca": ca_pem, "req": request }))
            .await;
        let answer = self
            .wait_for("a TLS handshake", |m| {
                m["type"] == "peer_cert" && m["req"] == request
            })
            .await;
        answer["fingerprint"]
            .as_str()
            .unwrap_or_else(|| panic!("handshake failed: {answer}"))
            .to_string()
    }

    /// Round-trips an `activity` event: everything the server sent to this
    /// socket before answering has arrived once this returns.
    pub async fn barrier(&self, name: &str) {
        let answer = self.emit_ack(name, "activity", json!([])).await;
        assert_eq!(answer["ok"], true, "activity answer: {answer}");
    }

    /// Events of type `event` received so far by `name` (consumed).
    pub fn drain(&self, name: &str, event: &str) -> Vec<Value> {
        let mut inbox = self.inbox.lock().unwrap();
        inbox
            .iter_mut()
            .filter(|slot| {
                slot.as_ref().is_some_and(|m| {
                    m["type"] == "event" && m["name"] == name && m["event"] == event
                })
            })
            .map(|slot| slot.take().unwrap()["args"][0].clone())
            .collect()
    }

    pub async fn wait_disconnect(&self, name: &str) -> String {
        let message = self
            .wait_for(&format!("{name} to disconnect"), |m| {
                m["type"] == "disconnect" && m["name"] == name
            })
            .await;
        message["reason"].as_str().unwrap_or_default().to_string()
    }

    pub async fn close(&self, name: &str) {
        self.command(json!({ "op": "close", "name": name })).await;
        self.wait_for(&format!("{name} to close"), |m| {
            m["type"] == "closed" && m["name"] == name
        })
        .await;
    }
}

/// A token that also carries an e-mail (learnt by the user directory).
pub fn token_with_email(user: &str, roles: &[&str], email: &str) -> String {
    sign(
        &json!({ "sub": user, "roles": roles, "email": email, "exp": now_secs() + 3600 }),
        SECRET,
    )
}

/// One email as the SMTP server stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub raw: String,
}

/// A real SMTP server (aiosmtpd, installed by scripts/test.sh) on a free
/// loopback port, storing every message it accepts in a maildir. It refuses
/// recipients named `reject…`; until [`SmtpServer::release_held`] it holds
/// its reply to RCPT for `stall…` and its `250` to DATA for `hold…`
/// (`tests/smtp/readback_test_smtp.py`).
pub struct SmtpServer {
    child: Option<Child>,
    pub port: u16,
    maildir: PathBuf,
    release: PathBuf,
}

impl SmtpServer {
    pub async fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap().keep();
        let mut server = Self {
            child: None,
            port,
            maildir: dir.join("maildir"),
            release: dir.join("release"),
        };
        server.resume().await;
        server
    }

    /// Starts (again) on the same port and maildir.
    pub async fn resume(&mut self) {
        let child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "readback_test_smtp.RefusingMailbox"])
            .env(
                "PYTHONPATH",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp"),
            )
            .env("READBACK_TEST_SMTP_RELEASE", &self.release)
            .arg(&self.maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd (python3 -m pip install aiosmtpd)");
        self.child = Some(child);
        wait_listening(self.port, "aiosmtpd").await;
    }

    /// Lets the held replies go, and every later one at once.
    pub fn release_held(&self) {
        std::fs::write(&self.release, "").unwrap();
    }

    /// Stops the server: connections are refused until `resume`.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// The `[smtp]` section pointing at this server, with quick retries.
    pub fn config(&self) -> String {
        format!(
            "[smtp]\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"readback@hospital.example\"\ntimeout = \"2s\"\nretry_base = \"200ms\"\nretry_max = \"1s\"\n",
            self.port
        )
    }

    pub fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<_> = std::fs::read_dir(self.maildir.join("new"))
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        let mut mails: Vec<Mail> = files
            .iter()
            .map(|path| {
                let raw = std::fs::read_to_string(path).unwrap();
                // Unfold continuation lines (RFC 5322 folding) first.
                let headers = raw
                    .split("\n\n")
                    .next()
                    .unwrap_or("")
                    .replace("\r\n", "\n")
                    .replace("\n ", " ")
                    .replace("\n\t", " ");
                let header = |name: &str| {
                    headers
                        .lines()
                        .find_map(|l| {
                            l.split_once(':')
                                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                                .map(|(_, v)| v.trim().to_string())
                        })
                        .unwrap_or_default()
                };
                Mail {
                    to: header("To"),
                    subject: header("Subject"),
                    message_id: header("Message-ID"),
                    raw: raw.clone(),
                }
            })
            .collect();
        mails.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        mails
    }

    /// Waits until at least `count` emails have arrived.
    pub async fn wait_for(&self, count: usize) -> Vec<Mail> {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mails = self.mails();
            if mails.len() >= count {
                return mails;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {count} emails; have {:#?}",
                mails
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A real Redis (redis-server, installed by scripts/test.sh) on a free
/// loopback port, without persistence.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub async fn start() -> Self {
        let port = free_port();
        let mut server = Self { child: None, port };
        server.resume().await;
        server
    }

    pub async fn resume(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_listening(self.port, "redis-server").await;
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    pub fn config(&self) -> String {
        format!(
            "[cluster]\nredis_url = \"redis://127.0.0.1:{}\"\n",
            self.port
        )
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
async fn wait_listening(port: u16, what: &str) {
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} did not start listening"));
}
