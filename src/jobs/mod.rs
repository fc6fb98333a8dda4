//! The calendar jobs of `[schedule]`: nightly audit verification,
//! retention, the escalation-path test email, the daily digest of open
//! actionable findings and the compliance report.
//!
//! Owns: firing each job on its cron expression in the configured time
//! zone (tokio-cron-scheduler), the claim of each firing in the database
//! (`job_runs`, keyed by job and slot: daemons sharing a database run a
//! slot once), the start-up catch-up (the latest slot missed while no
//! daemon ran, once), the `job.ran` audit row and the job metrics. What
//! each job does is in [`work`].
//! Never: run a slot it did not claim, start a job once shutdown began
//! (a job already running finishes: it runs on the daemon's task
//! tracker), or take the place of the due-item scan (`scheduler`), which
//! is a database tick, not a calendar.

pub mod work;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Offset, TimeZone};
use chrono_tz::Tz;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio_cron_scheduler::{JobScheduler, JobSchedulerError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{Action, AuditEvent};
use crate::clock::Timestamp;
use crate::config::{Config, Job, parse_cron};
use crate::escalation::mailer::Mailer;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError, audit, jobs as sql};

/// What the jobs use.
#[derive(Clone)]
pub struct Jobs {
    pub config: Arc<Config>,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Their own SMTP transport (the outbox sender owns the other one);
    /// `None` without `smtp.url`.
    pub mailer: Option<Arc<Mutex<Mailer>>>,
    /// Names this daemon in the claims it makes.
    pub instance: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    Config(String),
    #[error("job scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How one run ended: its detail for the audit row, and the error.
pub struct Outcome {
    pub detail: Value,
    pub error: Option<String>,
}

/// How often the time zone's offset is compared with the one the job
/// scheduler was given: tokio-cron-scheduler fixes a job's UTC offset when
/// the job is made, so after a daylight-saving change the jobs are made
/// again.
const OFFSET_CHECK: Duration = Duration::from_secs(60);

/// Loads the last outcomes into the metrics, runs the latest missed slot
/// of each job once, and starts firing the jobs; they stop when `shutdown`
/// is cancelled. Jobs run on `tasks`, so the drain waits for a running one.
pub async fn start(
    jobs: Jobs,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), JobsError> {
    let schedule = &jobs.config.schedule;
    let tz = schedule.tz().map_err(JobsError::Config)?;
    let active = schedule.active();
    jobs.load_metrics().await?;
    let mut crons = Vec::with_capacity(active.len());
    for &job in &active {
        let cron = parse_cron(schedule.cron(job)).map_err(JobsError::Config)?;
        crons.push((job, cron));
    }
    for (job, cron) in &crons {
        jobs.catch_up(*job, cron, tz, tasks).await?;
    }
    if crons.is_empty() {
        return Ok(());
    }
    let mut scheduler = JobScheduler::new().await?;
    let mut offset = current_offset(tz);
    let mut ids = register(&jobs, &scheduler, &crons, tz, tasks, &shutdown).await?;
    scheduler.start().await?;
    tracing::info!(
        jobs = ?active.iter().map(|j| j.name()).collect::<Vec<_>>(),
        timezone = %tz,
        "calendar jobs scheduled"
    );
    let (tasks_for_watch, jobs_for_watch) = (tasks.clone(), jobs.clone());
    let active = active.clone();
    tasks.spawn(async move {
        let mut check = tokio::time::interval(OFFSET_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = check.tick() => {}
            }
            if let Err(e) = jobs_for_watch
                .retry_expired(&active, &tasks_for_watch)
                .await
            {
                tracing::warn!(error = %e, "cannot look for calendar jobs to retry");
            }
            let now = current_offset(tz);
            if now == offset {
                continue;
            }
            offset = now;
            tracing::info!(timezone = %tz, "UTC offset changed; rescheduling the calendar jobs");
            for id in ids.drain(..) {
                let _ = scheduler.remove(&id).await;
            }
            match register(
                &jobs_for_watch,
                &scheduler,
                &crons,
                tz,
                &tasks_for_watch,
                &shutdown,
            )
            .await
            {
                Ok(new) => ids = new,
                Err(e) => tracing::error!(error = %e, "cannot reschedule the calendar jobs"),
            }
        }
        if let Err(e) = scheduler.shutdown().await {
            tracing::warn!(error = %e, "job scheduler did not stop cleanly");
        }
    });
    Ok(())
}

fn current_offset(tz: Tz) -> i32 {
    DateTime::from_timestamp_millis(Timestamp::now().as_millis()).map_or(0, |now| {
        tz.offset_from_utc_datetime(&now.naive_utc())
            .fix()
            .local_minus_utc()
    })
}

/// Adds each job to the scheduler: a firing works out its slot and runs
/// it on `tasks` unless shutdown began.
async fn register(
    jobs: &Jobs,
    scheduler: &JobScheduler,
    crons: &[(Job, croner::Cron)],
    tz: Tz,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Vec<uuid::Uuid>, JobsError> {
    let mut ids = Vec::with_capacity(crons.len());
    for (job, cron) in crons {
        let (job, cron) = (*job, cron.clone());
        let (jobs, tasks, shutdown) = (jobs.clone(), tasks.clone(), shutdown.clone());
        let expression = jobs.config.schedule.cron(job).to_string();
        let fire = tokio_cron_scheduler::Job::new_async_tz(expression, tz, move |_, _| {
            let (jobs, tasks, shutdown, cron) =
                (jobs.clone(), tasks.clone(), shutdown.clone(), cron.clone());
            Box::pin(async move {
                if shutdown.is_cancelled() {
                    return;
                }
                // The scheduler fires within a second after the slot: the
                // slot is the latest occurrence at or before now.
                let Some(slot) = latest_slot(&cron, tz, Timestamp::now()) else {
                    return;
                };
                tasks.spawn(async move { jobs.fire(job, slot).await });
            })
        })?;
        ids.push(scheduler.add(fire).await?);
    }
    Ok(ids)
}

/// The latest occurrence of `cron` in `tz` at or before `now`.
pub fn latest_slot(cron: &croner::Cron, tz: Tz, now: Timestamp) -> Option<Timestamp> {
    // Whole seconds: croner keeps the fraction of the time it starts from.
    let now: DateTime<Tz> =
        DateTime::from_timestamp(now.as_millis().div_euclid(1000), 0)?.with_timezone(&tz);
    cron.find_previous_occurrence(&now, true)
        .ok()
        .map(|at| Timestamp::from_millis(at.timestamp_millis()))
}

impl Jobs {
    /// The last success of each job, and the last verify's verdict, as
    /// recorded in the database (by this daemon or another).
    async fn load_metrics(&self) -> Result<(), StoreError> {
        let mut conn = self.store.conn().await?;
        for job in Job::ALL {
            let (last_ok, latest) = sql::last_outcomes(&mut conn, job.name()).await?;
            if let Some(at) = last_ok {
                self.metrics
                    .job_succeeded_at(job.name(), at.as_millis() / 1000);
            }
            if job == Job::AuditVerify {
                if let Some(at) = last_ok {
                    self.metrics
                        .audit_chain_checked(true, at.as_millis() / 1000);
                }
                if latest.as_deref() == Some("failed") {
                    self.metrics.audit_chain_checked(false, 0);
                }
            }
        }
        Ok(())
    }

    /// Runs the latest slot before now once, if the job ran before (a
    /// fresh database has no history to catch up on) and that slot has not
    /// run — or was claimed by a daemon that died before finishing it and
    /// whose lease ran out. Older missed slots are not run: one run
    /// brings a job up to date.
    async fn catch_up(
        &self,
        job: Job,
        cron: &croner::Cron,
        tz: Tz,
        tasks: &TaskTracker,
    ) -> Result<(), StoreError> {
        let Some(slot) = latest_slot(cron, tz, Timestamp::now()) else {
            return Ok(());
        };
        let last = {
            let mut conn = self.store.conn().await?;
            sql::latest_slot(&mut conn, job.name()).await?
        };
        if last.is_some_and(|last| last <= slot) {
            let jobs = self.clone();
            tasks.spawn(async move { jobs.fire(job, slot).await });
        }
        Ok(())
    }

    /// Runs again each firing of an active job that a daemon claimed but
    /// never finished (it died mid-job) once its lease has run out.
    async fn retry_expired(&self, active: &[Job], tasks: &TaskTracker) -> Result<(), StoreError> {
        let expired = {
            let mut conn = self.store.conn().await?;
            sql::expired_claims(&mut conn, Timestamp::now()).await?
        };
        for (name, slot) in expired {
            let Some(&job) = active.iter().find(|j| j.name() == name) else {
                continue;
            };
            tracing::warn!(job = name, %slot, "retrying a calendar job left unfinished");
            let jobs = self.clone();
            tasks.spawn(async move { jobs.fire(job, slot).await });
        }
        Ok(())
    }

    /// Claims `slot` of `job`; if this daemon got it, runs the job and
    /// records the outcome.
    pub async fn fire(&self, job: Job, slot: Timestamp) {
        let name = job.name();
        let attempt = match self.claim(job, slot).await {
            Ok(Some(attempt)) => attempt,
            Ok(None) => {
                tracing::debug!(job = name, %slot, "slot already claimed");
                return;
            }
            Err(e) => {
                tracing::error!(job = name, %slot, error = %e, "cannot claim the job's slot");
                self.metrics.job_ran(name, "failed");
                return;
            }
        };
        tracing::info!(job = name, %slot, attempt, "calendar job started");
        let outcome = work::run(self, job, slot).await;
        let ok = outcome.error.is_none();
        let now = Timestamp::now();
        if let Err(e) = self.record(job, slot, attempt, &outcome, now).await {
            // The claim stays unfinished: once its lease runs out a
            // start-up catch-up runs it again.
            tracing::error!(job = name, %slot, error = %e, "cannot record the job's outcome");
            self.metrics.job_ran(name, "failed");
            return;
        }
        if ok {
            self.metrics.job_ran(name, "ok");
            self.metrics.job_succeeded_at(name, now.as_millis() / 1000);
            tracing::info!(job = name, %slot, "calendar job succeeded");
        } else {
            self.metrics.job_ran(name, "failed");
            tracing::error!(job = name, %slot, error = ?outcome.error, "calendar job failed");
        }
    }

    async fn claim(&self, job: Job, slot: Timestamp) -> Result<Option<i64>, StoreError> {
        let now = Timestamp::now();
        let lease_until = now.plus(self.config.schedule.lease);
        let mut tx = self.store.begin().await?;
        let attempt =
            sql::claim(&mut tx, job.name(), slot, &self.instance, now, lease_until).await?;
        tx.commit().await?;
        Ok(attempt)
    }

    /// The run's end, in one transaction: the claim finished and its
    /// `job.ran` audit row.
    async fn record(
        &self,
        job: Job,
        slot: Timestamp,
        attempt: i64,
        outcome: &Outcome,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut detail = json!({
            "job": job.name(),
            "slot": slot,
            "attempt": attempt,
            "daemon": self.instance,
            "error": outcome.error,
        });
        if let (Value::Object(into), Value::Object(from)) = (&mut detail, &outcome.detail) {
            into.extend(from.clone());
        }
        let result = if outcome.error.is_none() {
            "ok"
        } else {
            "failed"
        };
        let event = AuditEvent::new(Action::JobRan, now)
            .by_system()
            .outcome(result)
            .detail(detail.clone());
        let mut tx = self.store.begin().await?;
        sql::finish(
            &mut tx,
            job.name(),
            slot,
            &self.instance,
            now,
            result,
            &detail.to_string(),
        )
        .await?;
        audit::append(&mut tx, &event).await?;
        tx.commit().await?;
        Ok(())
    }
}
