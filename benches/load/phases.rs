//! The phases of one run against one target, in order: idle memory with N
//! sockets, raise → receipt latency, a reconnect storm, the sustained raise
//! rate, a replay of 1,000, and forced disconnects (churn). `LOAD_PHASES`
//! picks some; the idle sockets are always connected, as the later phases
//! are measured with them (or their users) in place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Mutex, mpsc};

use crate::client::{Inbox, Viewer, collect, raise, raise_many, token, viewer};
use crate::report::Figures;
use crate::server::{Target, rss_kb, start};

/// How the phases reach the server under test.
struct Server {
    base: String,
    /// The PACS's token.
    service: String,
    client: reqwest::Client,
}

/// Whether `LOAD_PHASES` (every phase when unset) names `name`.
fn phase(name: &str) -> bool {
    std::env::var("LOAD_PHASES").map_or(true, |phases| phases.split(',').any(|p| p == name))
}

/// Starts `target`, runs the chosen phases against it, and stops it.
pub async fn measure(database: &'static str, target: Target, sockets: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let spawned = Instant::now();
    let daemon = start(&target, dir.path()).await;
    let mut figures = Figures {
        database,
        sockets,
        cold_start_ms: spawned.elapsed().as_secs_f64() * 1e3,
        ..Figures::default()
    };
    let server = Server {
        base: daemon.base.clone(),
        service: token("pacs", &["service"]),
        client: reqwest::Client::new(),
    };
    let idle = idle_sockets(&server, daemon.pid, sockets, &mut figures).await;
    if phase("latency") {
        latency(&server, &mut figures).await;
    }
    if phase("storm") {
        storm(&server, idle, &mut figures).await;
    } else {
        drop(idle);
    }
    if phase("rate") {
        rate(&server, &mut figures).await;
    }
    if phase("replay") {
        replay(&server, &mut figures).await;
    }
    if phase("churn") {
        churn(&mut figures, &server.client, &server.base, &server.service).await;
    }
    drop(daemon.child);
    figures
}

/// Memory: idle, then per idle authenticated socket. The sockets stay
/// connected for the next phases.
async fn idle_sockets(
    server: &Server,
    pid: u32,
    sockets: usize,
    figures: &mut Figures,
) -> Vec<(usize, Viewer)> {
    let (database, base) = (figures.database, &server.base);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kb(pid);
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
    let after = rss_kb(pid);
    let idle: Vec<(usize, Viewer)> = std::mem::take(&mut *connected.lock().await);
    figures.sockets = idle.len();
    figures.rss_per_socket_kb = (after - before) / idle.len().max(1) as f64;
    eprintln!(
        "{database}: cold start {:.0} ms, {} sockets, RSS {before} -> {after} kB",
        figures.cold_start_ms,
        idle.len()
    );
    idle
}

/// Raise → receipt at 200 raises/s with everything connected.
async fn latency(server: &Server, figures: &mut Figures) {
    let (base, service, client) = (&server.base, &server.service, &server.client);
    let database = figures.database;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let inbox = Inbox {
        receipts: Some(tx),
        acknowledged: None,
    };
    let _measured = viewer(base, token("measured", &["radiologist"]), inbox)
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

/// Reconnect storm: every idle viewer drops, gets one notification while
/// away, and all reconnect at once.
async fn storm(server: &Server, idle: Vec<(usize, Viewer)>, figures: &mut Figures) {
    let (base, service, client) = (&server.base, &server.service, &server.client);
    let database = figures.database;
    let users: Vec<String> = idle.iter().map(|(i, _)| format!("idle-{i}")).collect();
    drop(idle);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let raised = raise_many(client, base, service, "storm", &users).await;
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
}

/// Sustained durable raises/s: 16 workers for 10 s, to an offline user;
/// then the same 16 clients on a request that does no work.
async fn rate(server: &Server, figures: &mut Figures) {
    let (base, service, client) = (&server.base, &server.service, &server.client);
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

/// Replay of 1,000 pending notifications on one connect.
async fn replay(server: &Server, figures: &mut Figures) {
    let (base, service, client) = (&server.base, &server.service, &server.client);
    let database = figures.database;
    let users = vec!["returning".to_string(); 1000];
    raise_many(client, base, service, "pending", &users).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let inbox = Inbox {
        receipts: Some(tx),
        acknowledged: None,
    };
    let _returning = viewer(base, token("returning", &["radiologist"]), inbox)
        .await
        .unwrap();
    let (received, _) = collect(&mut rx, 1000, Duration::from_secs(10), |(id, _)| Some(id)).await;
    figures.replay_1000_ms = started.elapsed().as_secs_f64() * 1e3;
    eprintln!("{database}: replayed {} of 1000", received.len());
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
