//! systemd integration: readiness, status, watchdog, stopping.
//!
//! Owns: the `sd_notify` messages after start-up — `WATCHDOG=1` every half
//! `WatchdogSec` while the runtime and the scheduler are alive (a wedged
//! runtime or a stuck scheduler stops the pings and systemd restarts the
//! daemon), and `STATUS=` lines operators see in `systemctl status`.
//! `READY=1` and `STOPPING=1` are sent by `main` around serving.
//! Never: do any work of its own beyond reporting.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Timestamp;
use crate::realtime::hub::Hub;

/// `heartbeat` is the scheduler's (see `scheduler`), `tick` its interval;
/// `hub` counts the sockets for the status line.
pub fn spawn(
    tasks: &TaskTracker,
    hub: Hub,
    heartbeat: Arc<AtomicI64>,
    tick: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        let watchdog = sd_notify::watchdog_enabled();
        let every = watchdog
            .map_or(Duration::from_secs(10), |limit| limit / 2)
            .max(Duration::from_millis(10));
        // The scheduler must have ticked within this long to count as alive.
        let stale_after = (tick * 3 + Duration::from_secs(5)).max(watchdog.unwrap_or_default());
        let mut interval = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let last_tick = heartbeat.load(Ordering::Relaxed);
            let alive = Timestamp::now().as_millis() - last_tick
                <= i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
            let status = format!("serving; {} sockets connected", hub.local_count());
            let mut messages = vec![NotifyState::Status(&status)];
            if watchdog.is_some() && alive {
                messages.push(NotifyState::Watchdog);
            }
            if !alive {
                tracing::error!("scheduler has not ticked recently; withholding the watchdog ping");
            }
            let _ = sd_notify::notify(&messages);
        }
    })
}
