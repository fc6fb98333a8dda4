//! The servers a daemon talks to besides its database, each a real one on
//! a free loopback port, stoppable and resumable on the same port to play
//! an outage: SMTP (aiosmtpd) for escalation, Redis for scale-out, and the
//! identity provider's JWKS endpoint.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::WAIT;

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
                "timed out waiting for {count} emails; have {mails:#?}"
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

/// An identity provider's JWKS endpoint (axum, in the test process):
/// `GET /jwks.json` answers the key set the test last published, and
/// every request is counted.
pub struct JwksServer {
    pub port: u16,
    keys: Arc<Mutex<Value>>,
    requests: Arc<AtomicUsize>,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl JwksServer {
    /// Serving `keys` (JWKs).
    pub async fn start(keys: Vec<Value>) -> Self {
        let mut server = Self::stopped(keys);
        server.resume().await;
        server
    }

    /// Publishing `keys` once started, on a port reserved now, but not
    /// serving yet: an identity provider that is down.
    pub fn stopped(keys: Vec<Value>) -> Self {
        Self {
            port: free_port(),
            keys: Arc::new(Mutex::new(json!({ "keys": keys }))),
            requests: Arc::new(AtomicUsize::new(0)),
            running: None,
        }
    }

    /// Starts (again) on the same port.
    pub async fn resume(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the JWKS server's port");
        let (keys, requests) = (self.keys.clone(), self.requests.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (keys, requests) = (keys.clone(), requests.clone());
                async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    axum::Json(keys.lock().unwrap().clone())
                }
            }),
        );
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { signal.cancelled().await })
                .await
                .expect("serve the JWKS");
        });
        self.running = Some((stop, task));
    }

    /// Stops serving: connections are refused until `resume`.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            tokio::time::timeout(WAIT, task)
                .await
                .expect("the JWKS server did not stop in time")
                .unwrap();
        }
    }

    /// From now on, serves these keys.
    pub fn publish(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = json!({ "keys": keys });
    }

    /// How many times the key set was fetched.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    /// Waits until the key set has been fetched `count` times in all.
    pub async fn wait_requests(&self, count: usize) {
        let deadline = std::time::Instant::now() + WAIT;
        while self.requests() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out: the JWKS was fetched {} times, waited for {count}",
                self.requests()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
