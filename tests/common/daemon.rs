//! The daemon under test as a process: started on port 0 with a config
//! file, found through its ready line, stopped by signal; and its command
//! line (`audit verify`, `keygen`, ...) run once, as an operator would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

/// The running daemon.
pub struct Daemon {
    child: Child,
    pub url: String,
    config: PathBuf,
}

impl Daemon {
    /// The body of `GET /metrics` (Prometheus text).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub async fn start(config: &Path) -> Self {
        Self::start_with_env(config, &[]).await
    }

    /// Starts with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub async fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_readbackd"));
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stderr(Stdio::inherit());
        Self::spawn(command, config).await
    }

    /// Starts `command`, a `readbackd serve` on `config` set up by the
    /// caller (its stderr redirected, or run by a wrapper that `exec`s it
    /// so that signals still reach the daemon).
    pub async fn spawn(mut command: Command, config: &Path) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn readbackd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix("readbackd listening on ") {
                    return url.to_string();
                }
            }
            panic!("readbackd exited before it was listening");
        })
        .await
        .expect("readbackd did not print its ready line in time");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            url,
            config: config.to_path_buf(),
        }
    }

    /// SIGKILL: no drain, no goodbye — a crash.
    pub async fn kill9(mut self) {
        self.child.kill().await.expect("kill");
    }

    /// The exit status if the daemon exits within `limit`, else `None`.
    pub async fn exits_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(|status| status.expect("wait"))
    }

    /// SIGTERM, and the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("readbackd did not stop in time")
            .expect("wait")
    }

    /// Sends a signal (`HUP`, `TERM`, ...) without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    pub fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }
}

/// Runs `readbackd` with `args` to completion: its exit code and everything
/// it printed (stdout, then stderr).
pub fn readbackd(args: &[&str]) -> (Option<i32>, String) {
    readbackd_with_env(args, &[])
}

/// [`readbackd`] with extra environment variables.
pub fn readbackd_with_env(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run readbackd");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Waits until one line of the daemon's log files contains every needle.
pub async fn wait_for_log(logs: &Path, needles: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let found = std::fs::read_dir(logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
            .any(|text| {
                text.lines()
                    .any(|line| needles.iter().all(|n| line.contains(n)))
            });
        if found {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {needles:?} in the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
