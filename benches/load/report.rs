//! The figures of one measured target, and the Markdown table they are
//! written into (`docs/benchmarks.md`): each figure against its goal, which
//! goals are met, and readback's ratios to the peer.

use std::fmt::Write as _;

#[derive(Default)]
pub struct Figures {
    pub database: &'static str,
    pub sockets: usize,
    pub rss_per_socket_kb: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub raises_per_sec: f64,
    pub empty_requests_per_sec: f64,
    pub replay_1000_ms: f64,
    pub cold_start_ms: f64,
    pub idle_rss_mb: f64,
    pub storm_sockets: usize,
    pub storm_replayed: usize,
    pub storm_secs: f64,
    pub churn_raised: usize,
    pub churn_received: usize,
    pub churn_acknowledged: usize,
}

/// The whole report, for the targets in the order they were measured.
pub fn render(all: &[Figures]) -> String {
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
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    out.push_str("| figure | goal | ");
    for f in all {
        let _ = write!(out, "{} | ", f.database);
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(all.len()));
    out.push('\n');
    let row = |out: &mut String, name: &str, goal: &str, value: &dyn Fn(&Figures) -> String| {
        let _ = write!(out, "| {name} | {goal} | ");
        for f in all {
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
    out
}
