//! The servers a daemon talks to besides its database, each a real one on
//! a free loopback port, stoppable and resumable on the same port to play
//! an outage: SMTP (aiosmtpd) for escalation, Redis for scale-out.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

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
