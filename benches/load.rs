//! Load generator: many real Socket.IO (v5 over Engine.IO v4 WebSocket)
//! connections against the real `readbackd`, one tokio task per socket.
//!
//! Measures, on SQLite and (with `READBACK_TEST_POSTGRES_URL`) PostgreSQL:
//! - resident memory per idle authenticated socket with N connected;
//! - raise → receipt latency with N connected and 200 durable raises/s;
//! - sustained durable raises/s;
//! - replay of 1,000 pending notifications on one connect;
//! - cold start and idle memory, a reconnect storm of N clients, and
//!   delivery while every client is force-disconnected every 5 s.
//!
//! `LOAD_PHASES=latency,storm,rate,replay,churn` and
//! `LOAD_TARGETS=sqlite,postgres,peer` pick a part (everything by default;
//! a partial run only prints).
//!
//! Prints the figures and writes `docs/benchmarks.md`. `scripts/bench.sh`
//! raises the open-file limit and runs it; `LOAD_SOCKETS` sets N (10,000).

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Mutex, mpsc};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "load-benchmark-secret-0123456789";

#[derive(Default)]
struct Figures {
    database: &'static str,
    sockets: usize,
    rss_per_socket_kb: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    raises_per_sec: f64,
    empty_requests_per_sec: f64,
    replay_1000_ms: f64,
    cold_start_ms: f64,
    idle_rss_mb: f64,
    storm_sockets: usize,
    storm_replayed: usize,
    storm_secs: f64,
    churn_raised: usize,
    churn_received: usize,
    churn_acknowledged: usize,
}

fn token(user: &str, roles: &[&str]) -> String {
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

struct Daemon {
    child: tokio::process::Child,
    base: String,
    pid: u32,
}

/// What is measured: readbackd on a database, or the Node.js peer.
enum Target {
    Readback(String),
    Peer,
}

async fn start(target: &Target, dir: &std::path::Path) -> Daemon {
    let database_url = match target {
        Target::Readback(url) => url,
        Target::Peer => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/server.mjs");
            let child = tokio::process::Command::new("node")
                .args([script, SECRET])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("start the Node.js peer");
            return ready(child, "peer listening on ").await;
        }
    };
    let config = dir.join("load.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\njwt_secret = \"{SECRET}\"\n[database]\nurl = \"{database_url}\"\nmax_connections = 16\n[logging]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start readbackd");
    ready(child, "readbackd listening on ").await
}

/// Waits for the server's ready line and returns its address.
async fn ready(mut child: tokio::process::Child, prefix: &str) -> Daemon {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next_line().await.unwrap().expect("ready line");
        if let Some(url) = line.strip_prefix(prefix) {
            break url.to_string();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let pid = child.id().unwrap();
    Daemon { child, base, pid }
}

fn rss_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// What a viewer does with the notifications it receives.
#[derive(Clone, Default)]
struct Inbox {
    /// Every `critical_notification` id, with its arrival time.
    receipts: Option<mpsc::UnboundedSender<(String, Instant)>>,
    /// Acknowledge each one and report the ids whose ack answered `ok`.
    acknowledged: Option<mpsc::UnboundedSender<String>>,
}

/// A connected viewer. Dropping it aborts its task, which drops the TCP
/// connection without a close handshake — a forced disconnect.
struct Viewer {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A minimal Socket.IO client: connects, authenticates, answers pings,
/// reports `critical_notification`s and optionally acknowledges them.
async fn viewer(base: &str, token: String, inbox: Inbox) -> Result<Viewer, String> {
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

async fn raise(client: &reqwest::Client, base: &str, service: &str, id: &str, user: &str) -> bool {
    client
        .post(format!("{base}/api/v1/notifications"))
        .bearer_auth(service)
        .json(&json!({ "id": id, "recipient": { "userId": user }, "severity": "critical", "title": "load" }))
        .send()
        .await
        .is_ok_and(|r| r.status() == 201)
}

/// How many of `ids` arrive on `rx` within `limit`: (count, time taken).
async fn collect<T>(
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
async fn raise_many(
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

fn phase(name: &str) -> bool {
    std::env::var("LOAD_PHASES").map_or(true, |phases| phases.split(',').any(|p| p == name))
}

async fn measure(database: &'static str, target: Target, sockets: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let spawned = Instant::now();
    let daemon = start(&target, dir.path()).await;
    let mut figures = Figures {
        database,
        sockets,
        cold_start_ms: spawned.elapsed().as_secs_f64() * 1e3,
        ..Figures::default()
    };
    let base = daemon.base.clone();
    let service = token("pacs", &["service"]);
    let client = reqwest::Client::new();

    // Memory: idle, then per idle authenticated socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(daemon.pid);
    figures.idle_rss_mb = before / 1024.0;
    let connected: Arc<Mutex<Vec<(usize, Viewer)>>> = Arc::default();
    let mut tasks = Vec::new();
    for batch in (0..sockets).collect::<Vec<_>>().chunks(250) {
        for &i in batch {
            let (base, connected) = (base.clone(), connected.clone());
            tasks.push(tokio::spawn(async move {
                let token = token(&format!("idle-{i}"), &["radiologist"]);
                if let Ok(viewer) = viewer(&base, token, Inbox::default()).await {
                    connected.lock().await.push((i, viewer));
                }
            }));
        }
        for task in tasks.drain(..) {
            let _ = task.await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(daemon.pid);
    let idle: Vec<(usize, Viewer)> = std::mem::take(&mut *connected.lock().await);
    figures.sockets = idle.len();
    figures.rss_per_socket_kb = (after - before) / idle.len().max(1) as f64;
    eprintln!(
        "{database}: cold start {:.0} ms, {} sockets, RSS {before} -> {after} kB",
        figures.cold_start_ms,
        idle.len()
    );

    if phase("latency") {
        // Raise → receipt at 200 raises/s with everything connected.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let inbox = Inbox {
            receipts: Some(tx),
            acknowledged: None,
        };
        let _measured = viewer(&base, token("measured", &["radiologist"]), inbox)
            .await
            .unwrap();
        let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let total = 2000;
        let mut interval = tokio::time::interval(Duration::from_millis(5));
        let mut raisers = Vec::new();
        for i in 0..total {
            interval.tick().await;
            let (client, base, service, sent_at) = (
                client.clone(),
                base.clone(),
                service.clone(),
                sent_at.clone(),
            );
            raisers.push(tokio::spawn(async move {
                let id = format!("lat-{i}");
                sent_at.lock().await.insert(id.clone(), Instant::now());
                raise(&client, &base, &service, &id, "measured").await
            }));
        }
        for raiser in raisers {
            let _ = raiser.await;
        }
        let mut latencies = Vec::new();
        while latencies.len() < total {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some((id, at))) => {
                    if let Some(sent) = sent_at.lock().await.get(&id) {
                        latencies.push(at.duration_since(*sent).as_secs_f64() * 1e3);
                    }
                }
                _ => break,
            }
        }
        latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if !latencies.is_empty() {
            figures.latency_p50_ms = latencies[latencies.len() / 2];
            figures.latency_p99_ms = latencies[latencies.len() * 99 / 100];
        }
        eprintln!("{database}: {} of {total} received", latencies.len());
    }

    if phase("storm") {
        // Reconnect storm: every idle viewer drops, gets one notification
        // while away, and all reconnect at once.
        let users: Vec<String> = idle.iter().map(|(i, _)| format!("idle-{i}")).collect();
        drop(idle);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let raised = raise_many(&client, &base, &service, "storm", &users).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let reconnected = Arc::new(AtomicUsize::new(0));
        let holders: Arc<Mutex<Vec<Viewer>>> = Arc::default();
        for user in &users {
            let (base, reconnected, holders) = (base.clone(), reconnected.clone(), holders.clone());
            let inbox = Inbox {
                receipts: Some(tx.clone()),
                acknowledged: None,
            };
            let token = token(user, &["radiologist"]);
            tokio::spawn(async move {
                // A refused or reset connect is retried, as clients do.
                for _ in 0..20 {
                    if let Ok(viewer) = viewer(&base, token.clone(), inbox.clone()).await {
                        reconnected.fetch_add(1, Ordering::Relaxed);
                        holders.lock().await.push(viewer);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        let (replayed, took) =
            collect(&mut rx, raised, Duration::from_secs(60), |(id, _)| Some(id)).await;
        // A replay can reach the channel a moment before its client task
        // counts itself connected.
        let counted = Instant::now();
        while reconnected.load(Ordering::Relaxed) < users.len()
            && counted.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        figures.storm_sockets = reconnected.load(Ordering::Relaxed);
        figures.storm_replayed = replayed.len();
        figures.storm_secs = took.as_secs_f64();
        eprintln!(
            "{database}: storm: {} of {} reconnected, {} of {raised} replayed in {:.1} s",
            figures.storm_sockets,
            users.len(),
            replayed.len(),
            took.as_secs_f64()
        );
        drop(std::mem::take(&mut *holders.lock().await));
        tokio::time::sleep(Duration::from_secs(2)).await;
    } else {
        drop(idle);
    }

    if phase("rate") {
        // Sustained durable raises/s: 16 workers for 10 s, to an offline user.
        let done = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(10);
        let mut workers = Vec::new();
        for w in 0..16 {
            let (client, base, service, done) =
                (client.clone(), base.clone(), service.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                let mut i = 0;
                while Instant::now() < until {
                    if raise(&client, &base, &service, &format!("rate-{w}-{i}"), "nobody").await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
        figures.raises_per_sec = done.load(Ordering::Relaxed) as f64 / 10.0;

        // The method's own ceiling: the same 16 clients on a request that
        // does no work (`/healthz` on readback, a 404 on the peer).
        let done = Arc::new(AtomicUsize::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let mut workers = Vec::new();
        for _ in 0..16 {
            let (client, base, done) = (client.clone(), base.clone(), done.clone());
            workers.push(tokio::spawn(async move {
                while Instant::now() < until {
                    if client.get(format!("{base}/healthz")).send().await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
        figures.empty_requests_per_sec = done.load(Ordering::Relaxed) as f64 / 5.0;
    }

    if phase("replay") {
        // Replay of 1,000 pending notifications on one connect.
        let users = vec!["returning".to_string(); 1000];
        raise_many(&client, &base, &service, "pending", &users).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let started = Instant::now();
        let inbox = Inbox {
            receipts: Some(tx),
            acknowledged: None,
        };
        let _returning = viewer(&base, token("returning", &["radiologist"]), inbox)
            .await
            .unwrap();
        let (received, _) =
            collect(&mut rx, 1000, Duration::from_secs(10), |(id, _)| Some(id)).await;
        figures.replay_1000_ms = started.elapsed().as_secs_f64() * 1e3;
        eprintln!("{database}: replayed {} of 1000", received.len());
    }

    if phase("churn") {
        churn(&mut figures, &client, &base, &service).await;
    }
    drop(daemon.child);
    figures
}

/// Forced disconnects: `CHURN_USERS` viewers each drop their connection
/// every 5 s (without a close handshake) and reconnect at once, while
/// notifications are raised to them at 100/s for 30 s. Every viewer
/// acknowledges what it receives; afterwards they stay connected until all
/// is acknowledged (or 30 s pass).
async fn churn(figures: &mut Figures, client: &reqwest::Client, base: &str, service: &str) {
    const USERS: usize = 500;
    const RAISES: usize = 3000;
    let (receipts_tx, mut receipts_rx) = mpsc::unbounded_channel();
    let (acked_tx, mut acked_rx) = mpsc::unbounded_channel();
    let raising = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut viewers = Vec::new();
    for u in 0..USERS {
        let inbox = Inbox {
            receipts: Some(receipts_tx.clone()),
            acknowledged: Some(acked_tx.clone()),
        };
        let (base, raising) = (base.to_string(), raising.clone());
        let token = token(&format!("churn-{u}"), &["radiologist"]);
        viewers.push(tokio::spawn(async move {
            // Spread the disconnects over the 5 s period.
            let mut hold = Duration::from_millis((u as u64 * 5000 / USERS as u64).max(1));
            loop {
                let connection = viewer(&base, token.clone(), inbox.clone()).await;
                if !raising.load(Ordering::Relaxed) {
                    // Settling: stay connected so replays are acknowledged.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                tokio::time::sleep(hold).await;
                drop(connection);
                hold = Duration::from_secs(5);
            }
        }));
    }
    drop((receipts_tx, acked_tx));
    let mut raised = HashSet::new();
    let mut interval = tokio::time::interval(Duration::from_millis(10));
    let mut raisers = Vec::new();
    for i in 0..RAISES {
        interval.tick().await;
        let (client, base, service) = (client.clone(), base.to_string(), service.to_string());
        raisers.push(tokio::spawn(async move {
            let id = format!("churn-n-{i}");
            raise(
                &client,
                &base,
                &service,
                &id,
                &format!("churn-{}", i % USERS),
            )
            .await
            .then_some(id)
        }));
    }
    for raiser in raisers {
        if let Ok(Some(id)) = raiser.await {
            raised.insert(id);
        }
    }
    raising.store(false, Ordering::Relaxed);
    let (acknowledged, _) =
        collect(&mut acked_rx, raised.len(), Duration::from_secs(30), Some).await;
    let mut received = HashSet::new();
    while let Ok((id, _)) = receipts_rx.try_recv() {
        received.insert(id);
    }
    for viewer in viewers {
        viewer.abort();
    }
    // An acknowledgement whose answer was lost with its connection is still
    // an acknowledgement: ask the server about the ones not confirmed.
    let mut recorded = 0;
    for id in raised.difference(&acknowledged) {
        let state = client
            .get(format!("{base}/api/v1/notifications/{id}"))
            .bearer_auth(service)
            .send()
            .await
            .ok();
        let state: Option<Value> = match state {
            Some(reply) => reply.json().await.ok(),
            None => None,
        };
        if state.is_some_and(|s| s["state"] == "acknowledged") {
            recorded += 1;
        }
    }
    figures.churn_raised = raised.len();
    figures.churn_received = received.intersection(&raised).count();
    figures.churn_acknowledged = acknowledged.intersection(&raised).count() + recorded;
    eprintln!(
        "{}: churn: {} raised, {} received, {} acknowledged ({recorded} of them with the answer lost in a disconnect)",
        figures.database, figures.churn_raised, figures.churn_received, figures.churn_acknowledged
    );
}

#[tokio::main]
async fn main() {
    let sockets: usize = std::env::var("LOAD_SOCKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut all = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let target = |name: &str| {
        std::env::var("LOAD_TARGETS").map_or(true, |targets| targets.split(',').any(|t| t == name))
    };
    if target("sqlite") {
        all.push(
            measure(
                "readback, SQLite",
                Target::Readback(format!("sqlite://{}/load.db", dir.path().display())),
                sockets,
            )
            .await,
        );
    }
    if let Ok(admin) = std::env::var("READBACK_TEST_POSTGRES_URL")
        && target("postgres")
    {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&admin).await.unwrap();
        conn.execute("DROP DATABASE IF EXISTS readback_load")
            .await
            .unwrap();
        conn.execute("CREATE DATABASE readback_load").await.unwrap();
        let url = format!("{}/readback_load", admin.rsplit_once('/').unwrap().0);
        all.push(measure("readback, PostgreSQL", Target::Readback(url), sockets).await);
    }
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/node_modules");
    if std::path::Path::new(peer).exists() && target("peer") {
        all.push(measure("Node.js socket.io peer (in memory)", Target::Peer, sockets).await);
    }
    let mut out = String::from(
        "# Benchmarks: readback under load\n\n\
         Written by `scripts/bench.sh` (`cargo bench --bench load`): the release `readbackd` and a load \
         generator in one machine, real Socket.IO v5 over WebSocket (one tokio task per socket, no \
         thread per socket), real HTTP, every raise committed before its `201` (SQLite \
         `synchronous=FULL`; the benchmark PostgreSQL runs with `fsync=off`).\n\n",
    );
    let _ = writeln!(
        out,
        "Machine: {} cores. Other figures: [bench-latency.md](bench-latency.md) (one socket), \
         [bench-scheduler.md](bench-scheduler.md), [bench-audit.md](bench-audit.md).\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    out.push_str("| figure | goal | ");
    for f in &all {
        let _ = write!(out, "{} | ", f.database);
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(all.len()));
    out.push('\n');
    let row = |out: &mut String, name: &str, goal: &str, value: &dyn Fn(&Figures) -> String| {
        let _ = write!(out, "| {name} | {goal} | ");
        for f in &all {
            let _ = write!(out, "{} | ", value(f));
        }
        out.push('\n');
    };
    row(&mut out, "cold start to listening", "≤ 300 ms", &|f| {
        format!("{:.0} ms", f.cold_start_ms)
    });
    row(
        &mut out,
        "idle RSS (listening, no sockets)",
        "≤ 20 MB",
        &|f| format!("{:.1} MB", f.idle_rss_mb),
    );
    row(
        &mut out,
        "idle authenticated sockets connected",
        "10,000",
        &|f| f.sockets.to_string(),
    );
    row(&mut out, "RSS per idle socket", "≤ 12 KB", &|f| {
        format!("{:.1} KB", f.rss_per_socket_kb)
    });
    row(
        &mut out,
        "raise → receipt p50, all connected, 200 raises/s",
        "",
        &|f| format!("{:.2} ms", f.latency_p50_ms),
    );
    row(
        &mut out,
        "raise → receipt p99, all connected, 200 raises/s",
        "≤ 10 ms",
        &|f| format!("{:.2} ms", f.latency_p99_ms),
    );
    row(
        &mut out,
        "sustained durable raises/s (16 clients)",
        "≥ 3× peer",
        &|f| format!("{:.0}", f.raises_per_sec),
    );
    row(
        &mut out,
        "requests/s the load generator reaches on a request that does no work (16 clients: the method is not the limit)",
        "",
        &|f| format!("{:.0}", f.empty_requests_per_sec),
    );
    row(
        &mut out,
        "replay of 1,000 pending on one connect",
        "≤ 500 ms",
        &|f| format!("{:.0} ms", f.replay_1000_ms),
    );
    row(
        &mut out,
        "reconnect storm: all reconnect at once, 1 pending each",
        "all within 30 s",
        &|f| {
            format!(
                "{} reconnected, {} replayed, {:.1} s",
                f.storm_sockets, f.storm_replayed, f.storm_secs
            )
        },
    );
    row(
        &mut out,
        "forced disconnect every 5 s (500 viewers, 100 raises/s for 30 s): received / acknowledged",
        "100% / 100%",
        &|f| {
            let pct = |n: usize| 100.0 * n as f64 / f.churn_raised.max(1) as f64;
            format!(
                "{:.2}% / {:.2}% of {}",
                pct(f.churn_received),
                pct(f.churn_acknowledged),
                f.churn_raised
            )
        },
    );
    let peer_rate = all
        .iter()
        .find(|f| f.database.starts_with("Node"))
        .map(|peer| peer.raises_per_sec);
    out.push_str("\nGoals, met or missed:\n\n");
    for f in all.iter().filter(|f| f.database.starts_with("readback")) {
        let verdict = |met: bool| if met { "met" } else { "**missed**" };
        let mut goals = vec![
            format!("cold start {}", verdict(f.cold_start_ms <= 300.0)),
            format!("idle RSS {}", verdict(f.idle_rss_mb <= 20.0)),
            format!("memory per socket {}", verdict(f.rss_per_socket_kb <= 12.0)),
            format!(
                "receipt p99 {}",
                verdict(f.latency_p99_ms > 0.0 && f.latency_p99_ms <= 10.0)
            ),
            format!(
                "replay {}",
                verdict(f.replay_1000_ms > 0.0 && f.replay_1000_ms <= 500.0)
            ),
            format!(
                "reconnect storm {}",
                verdict(
                    f.storm_sockets == f.sockets
                        && f.storm_replayed == f.sockets
                        && f.storm_secs <= 30.0
                )
            ),
            format!(
                "forced disconnects {}",
                verdict(
                    f.churn_raised > 0
                        && f.churn_received == f.churn_raised
                        && f.churn_acknowledged == f.churn_raised
                )
            ),
        ];
        if let Some(peer_rate) = peer_rate {
            goals.push(format!(
                "raises/s {}",
                verdict(f.raises_per_sec >= 3.0 * peer_rate)
            ));
        }
        let _ = writeln!(out, "- {}: {}", f.database, goals.join(", "));
    }
    if let Some(peer) = all.iter().find(|f| f.database.starts_with("Node")) {
        out.push_str("\nRatios, readback ÷ peer:\n\n");
        for f in all.iter().filter(|f| f.database.starts_with("readback")) {
            let _ = writeln!(
                out,
                "- {}: memory per socket {:.2}×, raises/s {:.2}×, receipt p99 {:.2}×",
                f.database,
                f.rss_per_socket_kb / peer.rss_per_socket_kb.max(0.001),
                f.raises_per_sec / peer.raises_per_sec.max(0.001),
                f.latency_p99_ms / peer.latency_p99_ms.max(0.001),
            );
        }
        out.push_str(
            "\nThe peer keeps its pending list in memory and stores nothing: its raise rate is an \
             in-memory rate; readback's is durable (each raise committed before its `201`).\n",
        );
    }
    out.push_str(
        "\nMethod: cold start is from spawning the process to its ready line; idle RSS is read \
         500 ms later. Memory per socket is the RSS growth over the idle RSS with all sockets \
         connected and authenticated, divided by their number. The storm drops the idle sockets \
         (no close handshake), raises one notification for each of their users, then reconnects \
         them all at once; the time is until every replay has arrived. In the forced-disconnect \
         run each viewer acknowledges everything it receives and drops its connection every 5 s \
         (phases spread over the period); afterwards viewers stay connected for up to 30 s so \
         what is pending is replayed and acknowledged.\n",
    );
    out.push_str(
        "\nProfiles of the misses and what was changed because of them: \
         [performance.md](performance.md).\n",
    );
    println!("{out}");
    if std::env::var("LOAD_PHASES").is_ok() || std::env::var("LOAD_TARGETS").is_ok() {
        eprintln!("a partial run (LOAD_PHASES or LOAD_TARGETS): docs/benchmarks.md left as it is");
        return;
    }
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md"),
        out,
    )
    .unwrap();
}
