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
//!
//! `server` starts what is measured, `client` is the load generator's raw
//! Socket.IO client, `phases` runs the measurements and `report` writes the
//! table.

mod client;
mod phases;
mod report;
mod server;
#[path = "../support/mod.rs"]
mod support;

use phases::measure;
use server::Target;

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
        let url = support::fresh_postgres_database(&admin, "readback_load").await;
        all.push(measure("readback, PostgreSQL", Target::Readback(url), sockets).await);
    }
    let peer = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/peer/node_modules");
    if std::path::Path::new(peer).exists() && target("peer") {
        all.push(measure("Node.js socket.io peer (in memory)", Target::Peer, sockets).await);
    }
    let out = report::render(&all);
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
