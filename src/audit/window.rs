//! A window of counted audit events, written as one row per key.
//!
//! Owns: the in-memory tallies of one window (per key), writing them as
//! audit rows in one transaction, putting them back (merged with what came
//! meanwhile) when the database refuses, and the task that flushes every
//! window, early when asked, and a last time at shutdown. Refused logins
//! (`refusals.rs`) and reads of PHI (`reads.rs`) are such windows; each
//! says what its key, tally and row are.
//! Never: decide what is counted or what a row says.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::AuditEvent;
use crate::store::{Store, StoreError, audit};

/// What a window counts per key `K`, and the row it writes.
pub trait Tally<K>: Send + 'static {
    /// What the rows are, for a warning when they cannot be written.
    const WHAT: &'static str;
    /// Adds the tally of an earlier window (one the database refused) to
    /// this one.
    fn merge(&mut self, older: Self);
    /// The audit row of this key's window.
    fn row(&self, key: &K) -> AuditEvent;
}

/// The tallies of the current window; cheap to clone.
pub struct Window<K, T> {
    pending: Arc<Mutex<HashMap<K, T>>>,
    /// Rung to write the window before it ends.
    full: Arc<Notify>,
}

impl<K, T> Clone for Window<K, T> {
    fn clone(&self) -> Self {
        Self {
            pending: self.pending.clone(),
            full: self.full.clone(),
        }
    }
}

impl<K, T> Default for Window<K, T> {
    fn default() -> Self {
        Self {
            pending: Arc::default(),
            full: Arc::default(),
        }
    }
}

impl<K: Eq + Hash + Send + 'static, T: Tally<K>> Window<K, T> {
    /// Runs `count` on the window's tallies. A panic elsewhere while they
    /// were held leaves counts, not broken invariants: they are used as is.
    pub fn count<R>(&self, count: impl FnOnce(&mut HashMap<K, T>) -> R) -> R {
        count(&mut self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Asks the flusher to write the window now.
    pub fn write_early(&self) {
        self.full.notify_one();
    }

    /// Writes what the window counted, one audit row per key, in one
    /// transaction. Returns how many rows. Kept for the next window if the
    /// database refuses.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let taken = self.count(std::mem::take);
        if taken.is_empty() {
            return Ok(0);
        }
        let events: Vec<AuditEvent> = taken.iter().map(|(key, tally)| tally.row(key)).collect();
        let rows = events.len();
        let written = async {
            let mut tx = store.begin().await?;
            audit::append_all(&mut tx, events).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        if let Err(e) = written {
            self.count(|pending| {
                for (key, tally) in taken {
                    match pending.get_mut(&key) {
                        Some(newer) => newer.merge(tally),
                        None => {
                            pending.insert(key, tally);
                        }
                    }
                }
            });
            return Err(e);
        }
        Ok(rows)
    }

    /// Flushes every `window` (or when asked early) on `tasks`, and a last
    /// time when `stop` fires (after serving has ended, so nothing counted
    /// is left unwritten).
    pub fn spawn_flusher(
        &self,
        tasks: &TaskTracker,
        store: Store,
        window: Duration,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(window);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    () = this.full.notified() => false,
                    () = stop.cancelled() => true,
                };
                if let Err(e) = this.flush(&store).await {
                    tracing::warn!(error = %e, what = T::WHAT, "could not write the window's audit rows; keeping them for the next window");
                }
                if stopping {
                    return;
                }
            }
        });
    }
}
