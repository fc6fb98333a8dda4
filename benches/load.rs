//! Load generator: many real Socket.IO (v5 over Engine.IO v4 WebSocket)
//! connections against the real `readbackd`, one tokio task per socket.
//!
//! Measures, on SQLite and (with `READBACK_TEST_POSTGRES_URL`) PostgreSQL:
//! - resident memory per idle authenticated socket with N connected;
//! - raise → receipt latency with N connected and 200 durable raises/s;
//! - sustained durable raises/s;
//! - replay of 1,000 pending notifications on one connect.
//!
//! Prints the figures and writes `docs/benchmarks.md`. `scripts/bench.sh`
//! raises the open-file limit and runs it; `LOAD_SOCKETS` sets N (10,000).

use std::collections::HashMap;
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
    replay_1000_ms: f64,
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

/// A minimal Socket.IO client: connects, authenticates, answers pings, and
/// forwards `critical_notification` ids with their arrival time.
async fn viewer(
    base: &str,
    token: String,
    notifications: Option<mpsc::UnboundedSender<(String, Instant)>>,
) -> Result<(), String> {
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
    tokio::spawn(async move {
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
                && let Some(sender) = &notifications
                && payload.starts_with("[\"critical_notification\"")
            {
                let at = Instant::now();
                if let Ok(Value::Array(parts)) = serde_json::from_str::<Value>(payload)
                    && let Some(id) = parts.get(1).and_then(|n| n["id"].as_str())
                {
                    let _ = sender.send((id.to_string(), at));
                }
            }
        }
    });
    ready_rx.await.map_err(|e| e.to_string())?
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

async fn measure(database: &'static str, target: Target, sockets: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let daemon = start(&target, dir.path()).await;
    let base = daemon.base.clone();
    let service = token("pacs", &["service"]);
    let client = reqwest::Client::new();
    let mut figures = Figures {
        database,
        sockets,
        ..Figures::default()
    };

    // Memory per idle authenticated socket.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(daemon.pid);
    let connected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for batch in (0..sockets).collect::<Vec<_>>().chunks(250) {
        for &i in batch {
            let (base, connected) = (base.clone(), connected.clone());
            tasks.push(tokio::spawn(async move {
                if viewer(&base, token(&format!("idle-{i}"), &["radiologist"]), None)
                    .await
                    .is_ok()
                {
                    connected.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for task in tasks.drain(..) {
            let _ = task.await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kb(daemon.pid);
    let connected = connected.load(Ordering::Relaxed);
    figures.sockets = connected;
    figures.rss_per_socket_kb = (after - before) / connected.max(1) as f64;
    eprintln!("{database}: {connected} sockets, RSS {before} -> {after} kB");

    // Latency at 200 raises/s with everything connected.
    let (tx, mut rx) = mpsc::unbounded_channel();
    viewer(&base, token("measured", &["radiologist"]), Some(tx))
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

    // Replay of 1,000 pending notifications on one connect.
    for i in 0..1000 {
        raise(
            &client,
            &base,
            &service,
            &format!("pending-{i}"),
            "returning",
        )
        .await;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    viewer(&base, token("returning", &["radiologist"]), Some(tx))
        .await
        .unwrap();
    let mut received = 0;
    while received < 1000 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    figures.replay_1000_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("{database}: replayed {received} of 1000");
    drop(daemon.child);
    figures
}

#[tokio::main]
async fn main() {
    let sockets: usize = std::env::var("LOAD_SOCKETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut all = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    all.push(
        measure(
            "readback, SQLite",
            Target::Readback(format!("sqlite://{}/load.db", dir.path().display())),
            sockets,
        )
        .await,
    );
    if let Ok(admin) = std::env::var("READBACK_TEST_POSTGRES_URL") {
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
    if std::path::Path::new(peer).exists() {
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
        "replay of 1,000 pending on one connect",
        "≤ 500 ms",
        &|f| format!("{:.0} ms", f.replay_1000_ms),
    );
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
        "\nNot measured yet: delivery under forced disconnects every 5 s, and the 10,000-client \
         reconnect storm.\n",
    );
    println!("{out}");
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md"),
        out,
    )
    .unwrap();
}
