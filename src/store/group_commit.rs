//! Group commit: concurrent raises and delivery records share one
//! transaction.
//!
//! Plain infrastructure: it commits the rows it is given (a notification
//! with its escalation steps and audit row; delivery rows with theirs) and
//! decides nothing about them — what a raise writes is assembled by
//! `notifications::service::raise`.
//!
//! Every raise must be committed before its `201`. One transaction (and on
//! SQLite one fsync, on PostgreSQL one turn at the audit chain's head row)
//! per raise or per delivery made those the limit; here a single task takes
//! every write waiting in its queue — up to [`MAX_BATCH`] — writes them in
//! one transaction with their escalation steps and audit rows, and answers
//! each after the commit. Nothing waits for a batch to fill: a lone write is
//! committed at once, and batches form only while a commit is in flight. A
//! batch that fails on a database error is retried one write per
//! transaction, so one bad write cannot fail its neighbours.
//! Never: answer a write before its transaction has committed.

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::notifications::Delivery;
use super::{Store, StoreError, audit};
use super::{escalation as escalation_sql, notifications as sql};
use crate::audit::AuditEvent;
use crate::escalation::PlannedStep;
use crate::notifications::{NewNotification, Notification};

/// Most raises in one transaction.
pub const MAX_BATCH: usize = 64;

/// A write waiting for its commit.
enum Job {
    Raise {
        new: Box<NewNotification>,
        steps: Vec<PlannedStep>,
        /// Its `notification.raised` row, appended only if it is inserted.
        raised: Box<AuditEvent>,
        reply: oneshot::Sender<Result<Option<Notification>, StoreError>>,
    },
    /// Delivery rows, and the audit rows that go with them
    /// (`notification.delivered`, `.replayed`, `.undelivered`).
    Deliveries {
        deliveries: Vec<Delivery>,
        events: Vec<AuditEvent>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// What one job's part of a committed transaction produced.
enum Written {
    Raise(Option<Box<Notification>>),
    Deliveries,
}

impl Job {
    fn answer(self, result: Result<Written, StoreError>) {
        match self {
            Job::Raise { reply, .. } => {
                let _ = reply.send(result.map(|written| match written {
                    Written::Raise(inserted) => inserted.map(|boxed| *boxed),
                    Written::Deliveries => None,
                }));
            }
            Job::Deliveries { reply, .. } => {
                let _ = reply.send(result.map(|_| ()));
            }
        }
    }
}

/// The handle writes are committed through.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

impl Committer {
    /// Starts the committing task on `tasks`. It runs until `stop`, then
    /// commits what is still queued and ends; writes offered after that
    /// fail as unavailable.
    pub fn start(store: Store, tasks: &TaskTracker, stop: CancellationToken) -> Self {
        let (queue, jobs) = mpsc::channel(4 * MAX_BATCH);
        tasks.spawn(run(store, jobs, stop));
        Self { queue }
    }

    /// Stores `new` with its escalation plan and its `notification.raised`
    /// audit row, in one transaction. `None` (and nothing written) when its
    /// id or idempotency key is already taken.
    pub async fn insert(
        &self,
        new: NewNotification,
        steps: Vec<PlannedStep>,
        raised: AuditEvent,
    ) -> Result<Option<Notification>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Raise {
            new: Box::new(new),
            steps,
            raised: Box::new(raised),
            reply,
        };
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stores delivery rows with their audit rows.
    pub async fn record_deliveries(
        &self,
        deliveries: Vec<Delivery>,
        events: Vec<AuditEvent>,
    ) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        let job = Job::Deliveries {
            deliveries,
            events,
            reply,
        };
        self.queue.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(store: Store, mut jobs: mpsc::Receiver<Job>, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            // Queued writes first: stopping never drops one.
            biased;
            received = jobs.recv_many(&mut batch, MAX_BATCH) => received,
            () = stop.cancelled() => {
                jobs.close();
                jobs.recv_many(&mut batch, MAX_BATCH).await
            }
        };
        if received == 0 {
            break;
        }
        match commit(&store, &batch).await {
            Ok(results) => {
                for (job, written) in batch.drain(..).zip(results) {
                    job.answer(Ok(written));
                }
            }
            Err(StoreError::Query(_)) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let result = commit(&store, std::slice::from_ref(&job))
                        .await
                        .map(|mut one| one.pop().expect("one result per job"));
                    job.answer(result);
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, writes = batch.len(), "could not commit");
                for job in batch.drain(..) {
                    job.answer(Err(same_error(&error)));
                }
            }
        }
    }
}

/// One transaction for `batch`: each raise's row, steps and audit row;
/// each delivery's row and audit row.
async fn commit(store: &Store, batch: &[Job]) -> Result<Vec<Written>, StoreError> {
    let mut tx = store.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::with_capacity(batch.len());
    for job in batch {
        match job {
            Job::Raise {
                new, steps, raised, ..
            } => {
                let inserted = sql::insert(&mut tx, new).await?;
                if let Some(notification) = &inserted {
                    escalation_sql::insert_steps(&mut tx, &notification.id, steps).await?;
                    events.push((**raised).clone());
                }
                results.push(Written::Raise(inserted.map(Box::new)));
            }
            Job::Deliveries {
                deliveries,
                events: rows,
                ..
            } => {
                for delivery in deliveries {
                    sql::insert_delivery(&mut tx, delivery).await?;
                }
                events.extend(rows.iter().cloned());
                results.push(Written::Deliveries);
            }
        }
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
