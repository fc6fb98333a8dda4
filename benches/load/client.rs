//! The load generator's side: a minimal Socket.IO v5 client over a raw
//! Engine.IO v4 WebSocket (one tokio task per socket, so tens of thousands
//! fit in one process), tokens, and durable raises over HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::server::SECRET;

#[allow(clippy::disallowed_methods)] // tokens and timings need the wall clock, not the daemon's
pub fn token(user: &str, roles: &[&str]) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": user, "roles": roles, "exp": exp }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// What a viewer does with the notifications it receives.
#[derive(Clone, Default)]
pub struct Inbox {
    /// Every `critical_notification` id, with its arrival time.
    pub receipts: Option<mpsc::UnboundedSender<(String, Instant)>>,
    /// Acknowledge each one and report the ids whose ack answered `ok`.
    pub acknowledged: Option<mpsc::UnboundedSender<String>>,
}

/// A connected viewer. Dropping it aborts its task, which drops the TCP
/// connection without a close handshake — a forced disconnect.
pub struct Viewer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal Socket.IO client: connects, authenticates, answers pings,
/// reports `critical_notification`s and optionally acknowledges them.
pub async fn viewer(base: &str, token: String, inbox: Inbox) -> Result<Viewer, String> {
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        base.replacen("http", "ws", 1)
    );
    let (stream, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| e.to_string())?;
    let (mut write, mut read) = stream.split();
    // Engine.IO open packet, then the Socket.IO CONNECT with auth.
    read.next()
        .await
        .ok_or("closed before open")?
        .map_err(|e| e.to_string())?;
    write
        .send(Message::text(format!("40{}", json!({ "token": token }))))
        .await
        .map_err(|e| e.to_string())?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let task = tokio::spawn(async move {
        let mut next_ack = 0u64;
        let mut awaiting: HashMap<u64, String> = HashMap::new();
        while let Some(Ok(message)) = read.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let text = text.as_str();
            if text == "2" {
                if write.send(Message::text("3")).await.is_err() {
                    break;
                }
            } else if text.starts_with("40") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Ok(()));
                }
            } else if text.starts_with("44") {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(Err(text.to_string()));
                }
            } else if let Some(payload) = text.strip_prefix("42")
                && payload.starts_with("[\"critical_notification\"")
            {
                let at = Instant::now();
                let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(payload) else {
                    continue;
                };
                let Some(id) = parts.get(1).and_then(|n| n["id"].as_str()) else {
                    continue;
                };
                if let Some(receipts) = &inbox.receipts {
                    let _ = receipts.send((id.to_string(), at));
                }
                if inbox.acknowledged.is_some() {
                    next_ack += 1;
                    awaiting.insert(next_ack, id.to_string());
                    let ack = format!(
                        "42{next_ack}{}",
                        json!(["acknowledge_notification", { "notificationId": id }])
                    );
                    if write.send(Message::text(ack)).await.is_err() {
                        break;
                    }
                }
            } else if let Some(rest) = text.strip_prefix("43") {
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                let (ack_id, answer) = rest.split_at(digits);
                if let (Ok(ack_id), Some(acknowledged)) = (ack_id.parse(), &inbox.acknowledged)
                    && let Some(id) = awaiting.remove(&ack_id)
                    && answer.contains("\"ok\":true")
                {
                    let _ = acknowledged.send(id);
                }
            }
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(Viewer { task }),
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err("closed before connecting".into()),
    }
}

pub async fn raise(
    client: &reqwest::Client,
    base: &str,
    service: &str,
    id: &str,
    user: &str,
) -> bool {
    client
        .post(format!("{base}/api/v1/notifications"))
        .bearer_auth(service)
        .json(&json!({ "id": id, "recipient": { "userId": user }, "severity": "critical", "title": "load" }))
        .send()
        .await
        .is_ok_and(|r| r.status() == 201)
}

/// How many of `ids` arrive on `rx` within `limit`: (count, time taken).
pub async fn collect<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    wanted: usize,
    limit: Duration,
    mut key: impl FnMut(T) -> Option<String>,
) -> (HashSet<String>, Duration) {
    let started = Instant::now();
    let mut seen = HashSet::new();
    while seen.len() < wanted {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(item)) => {
                if let Some(id) = key(item) {
                    seen.insert(id);
                }
            }
            _ => break,
        }
    }
    (seen, started.elapsed())
}

/// Durable raises to `users` (round robin) from 16 workers; returns how many
/// were answered `201`.
pub async fn raise_many(
    client: &reqwest::Client,
    base: &str,
    service: &str,
    prefix: &str,
    users: &[String],
) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(users.to_vec());
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (client, base, service, done, next, users, prefix) = (
            client.clone(),
            base.to_string(),
            service.to_string(),
            done.clone(),
            next.clone(),
            users.clone(),
            prefix.to_string(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(user) = users.get(i) else { break };
                if raise(&client, &base, &service, &format!("{prefix}-{i}"), user).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    done.load(Ordering::Relaxed)
}
