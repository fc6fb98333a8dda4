//! Group commit of raises: concurrent raises share one transaction.
//!
//! Every raise must be committed before its `201`. One transaction (and on
//! SQLite one fsync) per raise made the disk the limit; here a single task
//! takes every raise waiting in its queue — up to [`MAX_BATCH`] — writes
//! them in one transaction with their escalation steps and audit rows, and
//! answers each after the commit. Nothing waits for a batch to fill: a lone
//! raise is committed at once, and batches form only while a commit is in
//! flight. A batch that fails on a database error is retried one raise per
//! transaction, so one bad raise cannot fail its neighbours.
//! Never: answer a raise before its transaction has committed.

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{NewNotification, Notification};
use crate::audit::{Action, AuditEvent};
use crate::auth::Identity;
use crate::escalation::PlannedStep;
use crate::store::{Store, StoreError, audit};
use crate::store::{escalation as escalation_sql, notifications as sql};

/// Most raises in one transaction.
pub const MAX_BATCH: usize = 64;

/// A raise waiting for its commit.
struct Job {
    new: NewNotification,
    steps: Vec<PlannedStep>,
    caller: Identity,
    reply: oneshot::Sender<Result<Option<Notification>, StoreError>>,
}

/// The handle raises are committed through.
#[derive(Clone)]
pub struct RaiseCommitter {
    queue: mpsc::Sender<Job>,
}

impl RaiseCommitter {
    /// Starts the committing task on the current runtime.
    pub fn start(store: Store) -> Self {
        let (queue, jobs) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(store, jobs));
        Self { queue }
    }

    /// Stores `new` with its escalation plan and its `notification.raised`
    /// audit row. `None` when its id or idempotency key is already taken.
    pub async fn insert(
        &self,
        new: NewNotification,
        steps: Vec<PlannedStep>,
        caller: &Identity,
    ) -> Result<Option<Notification>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            new,
            steps,
            caller: caller.clone(),
            reply,
        };
        let stopped = || StoreError::Unavailable(sqlx::Error::PoolClosed);
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(store: Store, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(&store, &batch).await {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(StoreError::Query(_)) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let result = commit(&store, std::slice::from_ref(&job))
                        .await
                        .map(|mut one| one.pop().flatten());
                    let _ = job.reply.send(result);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, raises = batch.len(), "could not commit raises");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(same_error(&error)));
                }
            }
        }
    }
}

/// One transaction for `batch`: each raise's row, steps and audit row.
async fn commit(store: &Store, batch: &[Job]) -> Result<Vec<Option<Notification>>, StoreError> {
    let mut tx = store.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    for job in batch {
        let inserted = sql::insert(&mut tx, &job.new).await?;
        if let Some(notification) = &inserted {
            escalation_sql::insert_steps(&mut tx, &notification.id, &job.steps).await?;
            events.push(
                AuditEvent::new(Action::NotificationRaised, notification.created_at)
                    .by(&job.caller)
                    .about(notification)
                    .detail(json!({
                        "severity": notification.severity,
                        "recipient": notification.recipient,
                        "ackDeadline": notification.ack_deadline,
                        "idempotencyKey": job.new.idempotency_key,
                        "escalationLevels": job.steps.len(),
                    })),
            );
        }
        results.push(inserted);
    }
    audit::append_all(&mut tx, events).await?;
    tx.commit().await?;
    Ok(results)
}

/// The same failure for every raise of a batch (`sqlx::Error` is not
/// `Clone`): same kind, same message.
fn same_error(error: &StoreError) -> StoreError {
    let message = || sqlx::Error::Protocol(error.to_string());
    match error {
        StoreError::Unavailable(_) => StoreError::Unavailable(message()),
        _ => StoreError::Query(message()),
    }
}
