//! The server under test as a child process: `readbackd` on a database,
//! or the Node.js socket.io peer it is compared with; found through its
//! ready line, measured through `/proc`.

use tokio::io::{AsyncBufReadExt, BufReader};

/// The secret both servers check tokens with.
pub const SECRET: &str = "load-benchmark-secret-0123456789";

pub struct Daemon {
    pub child: tokio::process::Child,
    pub base: String,
    pub pid: u32,
}

/// What is measured: readbackd on a database, or the Node.js peer.
pub enum Target {
    Readback(String),
    Peer,
}

/// The benchmark measures capacity: its one PACS identity raises thousands
/// a second (and a viewer acknowledges as fast), far past the limits per
/// identity a hospital runs with (docs/security.md).
const LIMITS: &str = "[limits]\nraises_burst = 1000000\nraises_per_second = 1000000\n\
     client_events_burst = 1000000\nclient_events_per_second = 1000000\n";

pub async fn start(target: &Target, dir: &std::path::Path) -> Daemon {
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
            "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\njwt_secret = \"{SECRET}\"\n[database]\nurl = \"{database_url}\"\nmax_connections = 16\n[logging]\nlevel = \"warn\"\n{LIMITS}"
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

pub fn rss_kb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
