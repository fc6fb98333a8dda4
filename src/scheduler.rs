//! The scheduler: one loop that asks the database what is due.
//!
//! Owns: the tick (`scheduler.tick`) and calling each domain's scan. Due
//! times live in the database, so nothing is lost across restarts and
//! several daemons can share the work (each scan claims rows atomically).
//! A plain `tokio::time::interval` rather than a cron scheduler: the work
//! is "every tick, claim what is due", with sub-second ticks in tests and a
//! shutdown token to honour — there is no cron expression to evaluate and
//! no job state to keep in memory.
//! Never: keep per-item timers in memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::escalation::service::{self as escalation, Escalations};
use crate::metrics::Metrics;
use crate::sessions::service::{self as sessions, Sessions};

/// What one pass scans, and where it proves it ran.
pub struct Scheduler {
    pub sessions: Sessions,
    pub escalations: Escalations,
    /// When a pass last started (ms since the epoch): the watchdog's proof
    /// of life (see `supervisor`).
    pub heartbeat: Arc<AtomicI64>,
    pub metrics: Arc<Metrics>,
}

pub fn spawn(
    tasks: &TaskTracker,
    scheduler: Scheduler,
    tick: Duration,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(tick);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                due = tick.tick() => {
                    let lag = due.elapsed().as_secs_f64();
                    let now = crate::clock::Timestamp::now().as_millis() as f64 / 1000.0;
                    scheduler.metrics.scheduler_started(lag, now);
                    run_once(&scheduler).await;
                }
            }
        }
        tracing::debug!("scheduler stopped");
    })
}

/// One pass over everything that may be due. Errors are logged and the
/// next tick tries again: nothing is lost, only delayed.
pub async fn run_once(scheduler: &Scheduler) {
    let started = std::time::Instant::now();
    scheduler.heartbeat.store(
        crate::clock::Timestamp::now().as_millis(),
        Ordering::Relaxed,
    );
    match sessions::scan(&scheduler.sessions).await {
        Ok((0, 0)) => {}
        Ok((expired, warned)) => tracing::debug!(expired, warned, "sessions scanned"),
        Err(e) => tracing::warn!(error = %e, "session scan failed; retrying next tick"),
    }
    match escalation::scan(&scheduler.escalations).await {
        Ok(0) => {}
        Ok(fired) => tracing::debug!(fired, "escalation steps fired"),
        Err(e) => tracing::warn!(error = %e, "escalation scan failed; retrying next tick"),
    }
    let took = started.elapsed();
    scheduler.metrics.scheduler_finished(took.as_secs_f64());
    if took > Duration::from_millis(500) {
        tracing::warn!(?took, "scheduler tick was slow");
    }
}
