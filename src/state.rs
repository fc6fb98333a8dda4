//! The state the edges share: what an HTTP or Socket.IO handler may reach.
//!
//! Owns: [`AppState`], built once by the composition root (`app.rs`) and
//! cloned into every handler.
//! Never: be reached from a service or the store — they take the narrow
//! things they use (a store, a hub, a config section), not all of this.

use std::sync::Arc;

use crate::auth::Verifier;
use crate::config::Config;
use crate::escalation::service::Escalations;
use crate::metrics::Metrics;
use crate::notifications::service::Notifications;
use crate::realtime::hub::Hub;
use crate::sessions::service::Sessions;
use crate::store::Store;

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// The services, each holding only what it uses.
    pub notifications: Notifications,
    pub sessions: Sessions,
    pub escalations: Escalations,
    /// The rate limits the handlers check before doing any work.
    pub limits: Arc<crate::limits::Limits>,
    /// Refused logins, counted and written once per window.
    pub refusals: crate::audit::refusals::Refusals,
    /// Reads of notifications and exports of the log, counted and written
    /// once per window.
    pub reads: crate::audit::reads::Reads,
    /// The daemon's one task tracker, for work a handler leaves running
    /// (a socket's token-expiry watch).
    pub tasks: tokio_util::task::TaskTracker,
}
