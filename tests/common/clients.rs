//! Real Socket.IO clients: the JavaScript `socket.io-client`, many sockets
//! in one Node.js process driven over a line protocol
//! (`tests/js/driver.mjs`), so the daemon is tested against the reference
//! client rather than against our own idea of the protocol.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex, Notify};

use super::{Daemon, WAIT};

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
