//! Start-up: the one place where the application is assembled.
//!
//! Owns: [`Application`], which assembles the [`AppState`] the HTTP and
//! Socket.IO edges share, and, which `main` and the tests both use: `build` binds
//! the listener and migrates, `run_until_stopped` serves until the shutdown
//! token fires and then drains.
//! Never: read configuration or the environment itself — it is handed a
//! validated [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;

use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::layer::SocketIoLayer;
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide_postgres::SqlxAdapter;
use socketioxide_redis::RedisAdapter;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::escalation::mailer::{Mailer, Outbox};
use crate::escalation::service::Escalations;
use crate::http::limits::{CappedAcceptor, Limits};
use crate::metrics::Metrics;
use crate::notifications::service::Notifications;
use crate::realtime::{self, Hub};
use crate::sessions::service::Sessions;
use crate::state::AppState;
use crate::store::{Backend, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Smtp(String),
    #[error("cannot join the other daemons: {0}")]
    Cluster(String),
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: std::net::TcpListener,
    router: axum::Router,
    state: AppState,
    mailer: Option<Mailer>,
    /// The calendar jobs' own transport to the same SMTP server.
    jobs_mailer: Option<Mailer>,
    /// Rung by the escalation pass, heard by the outbox sender.
    outbox_wake: Arc<tokio::sync::Notify>,
    /// The scheduler's proof of life, read by the watchdog.
    scheduler_heartbeat: Arc<std::sync::atomic::AtomicI64>,
    /// Background work of the services, drained at shutdown.
    tasks: TaskTracker,
    /// The services' view of the drain.
    shutdown: CancellationToken,
    /// Stops the group commit once serving has ended.
    stop_writes: CancellationToken,
    /// The certificate served, when `server.tls` is set; SIGHUP reloads it.
    tls: Option<RustlsConfig>,
    /// The per-address caps, shared by the acceptor and the middleware.
    limits: Limits,
}

impl Application {
    /// Binds `server.listen` (so the port is known before serving starts),
    /// then [`Self::build_on`] it.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let listen = config.server.listen.clone();
        let listener = std::net::TcpListener::bind(&listen).map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        Self::build_on(config, listener).await
    }

    /// Connects and migrates the database and wires HTTP and Socket.IO to
    /// serve on `listener` (already bound: by `build`, or by a test or a
    /// benchmark that picked its own).
    pub async fn build_on(
        config: Config,
        listener: std::net::TcpListener,
    ) -> Result<Self, StartError> {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        let verifier = Arc::new(Verifier::from_config(&config.auth).map_err(StartError::Auth)?);
        let metrics = Arc::new(Metrics::default());
        metrics.escalation_levels(
            config.escalation.levels.len(),
            config.escalation.repeat_every.is_some(),
        );
        let jwks = match verifier.jwks() {
            Some(keys) => Some(first_jwks_fetch(&config, keys, metrics.clone()).await?),
            None => None,
        };
        let config = Arc::new(config);
        let outbox_wake = Arc::new(tokio::sync::Notify::new());
        let scheduler_heartbeat = Arc::new(std::sync::atomic::AtomicI64::new(
            crate::clock::Timestamp::now().as_millis(),
        ));
        let mailer = Mailer::from_config(&config.smtp).map_err(StartError::Smtp)?;
        let jobs_mailer = Mailer::from_config(&config.smtp).map_err(StartError::Smtp)?;
        let max_message = config.server.max_socket_message_bytes;
        let sockets = SocketIo::builder()
            // One limit on every transport: a long-polling body and a
            // WebSocket message or frame (whose own defaults are 64 MiB
            // and 16 MiB).
            .max_payload(max_message)
            .ws_max_message_size(usize::try_from(max_message).unwrap_or(usize::MAX))
            .ws_max_frame_size(usize::try_from(max_message).unwrap_or(usize::MAX))
            .connect_timeout(config.server.connect_timeout)
            // Viewer traffic is small JSON; a 4 KiB read buffer per socket
            // was 3 KB of the per-socket memory (docs/benchmarks.md).
            .ws_read_buffer_size(1024);
        let tasks = TaskTracker::new();
        let stop_writes = CancellationToken::new();
        let writes = crate::store::group_commit::Committer::start(
            store.clone(),
            &tasks,
            stop_writes.clone(),
        );
        let shutdown = CancellationToken::new();
        if let Some((fetcher, failures)) = jwks {
            fetcher.spawn(&tasks, shutdown.clone(), failures);
        }
        let refusals = crate::audit::refusals::Refusals::default();
        refusals.spawn_flusher(
            &tasks,
            store.clone(),
            config.audit.refusal_window,
            stop_writes.clone(),
        );
        let reads = crate::audit::reads::Reads::default();
        reads.spawn_flusher(
            &tasks,
            store.clone(),
            config.audit.read_window,
            stop_writes.clone(),
        );
        let limits = Arc::new(crate::limits::Limits::new(&config.limits));
        limits.spawn_pruner(&tasks, shutdown.clone());
        let state_for = |hub: Hub| {
            let escalations = Escalations {
                config: config.clone(),
                store: store.clone(),
                hub: hub.clone(),
                outbox_wake: outbox_wake.clone(),
                metrics: metrics.clone(),
            };
            AppState {
                config: config.clone(),
                store: store.clone(),
                verifier: verifier.clone(),
                hub: hub.clone(),
                metrics: metrics.clone(),
                notifications: Notifications {
                    config: config.clone(),
                    store: store.clone(),
                    hub: hub.clone(),
                    metrics: metrics.clone(),
                    writes: writes.clone(),
                    escalations: escalations.clone(),
                    tasks: tasks.clone(),
                    shutdown: shutdown.clone(),
                },
                sessions: Sessions {
                    config: config.clone(),
                    store: store.clone(),
                    hub,
                },
                escalations,
                tasks: tasks.clone(),
                refusals: refusals.clone(),
                reads: reads.clone(),
                limits: limits.clone(),
            }
        };
        let (router, state) = match (store.backend(), &config.cluster.redis_url) {
            // Daemons share their rooms through Redis.
            (_, Some(url)) => {
                let adapter = crate::realtime::cluster::redis(url)
                    .await
                    .map_err(StartError::Cluster)?;
                let (layer, io) = sockets
                    .with_adapter::<RedisAdapter<_>>(adapter)
                    .build_layer();
                let (router, state, joined) = wire(layer, io, &state_for);
                joined
                    .await
                    .map_err(|e| StartError::Cluster(e.to_string()))?;
                (router, state)
            }
            // One daemon per SQLite file: sockets live in this process.
            (Backend::Sqlite, None) => {
                let (layer, io) = sockets.build_layer();
                let (router, state, ()) = wire(layer, io, &state_for);
                (router, state)
            }
            // Daemons sharing a PostgreSQL database share their rooms through
            // it (LISTEN/NOTIFY), so an emit reaches sockets on every node.
            (Backend::Postgres, None) => {
                let adapter = crate::realtime::cluster::postgres(&config.database.connect_url())
                    .await
                    .map_err(StoreError::from)?;
                let (layer, io) = sockets
                    .with_adapter::<SqlxAdapter<_>>(adapter)
                    .build_layer();
                let (router, state, joined) = wire(layer, io, &state_for);
                joined
                    .await
                    .map_err(|e| StartError::Cluster(e.to_string()))?;
                (router, state)
            }
        };
        let limits = Limits::from_config(
            &state.config.server,
            state.limits.refused_logins.clone(),
            state.metrics.clone(),
        );
        // Outermost but for CORS (so a refusal still carries CORS headers):
        // every request, Socket.IO's included, gets its client address and
        // meets the caps first.
        let router = router
            .layer(axum::middleware::from_fn_with_state(
                limits.clone(),
                crate::http::limits::admit,
            ))
            .layer(crate::http::cors(&state.config.server.cors_origins));
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Bind { addr, source })?;
        let tls = match &state.config.server.tls {
            Some(tls) => Some(
                RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                    .await
                    .map_err(|e| StartError::Tls(format!("server.tls: {e}")))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            router,
            state,
            mailer,
            jobs_mailer,
            outbox_wake,
            scheduler_heartbeat,
            tasks,
            shutdown,
            stop_writes,
            tls,
            limits,
        })
    }

    /// The tracker every task of the daemon runs on (signal handlers
    /// included): `run_until_stopped` waits for it before closing the pool.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// The certificate in use, for SIGHUP to reload.
    pub fn tls(&self) -> Option<RustlsConfig> {
        self.tls.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` is cancelled, then stops accepting,
    /// disconnects the sockets, lets in-flight requests finish and closes
    /// the database pool (committed data is already durable).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let state = self.state;
        let tasks = self.tasks;
        // The services' token follows the caller's, for work they started
        // (retries) to see the drain.
        let (outer, inner) = (shutdown.clone(), self.shutdown.clone());
        tasks.spawn(async move {
            outer.cancelled().await;
            inner.cancel();
        });
        let tick = state.config.scheduler.tick;
        let scheduler = crate::scheduler::spawn(
            &tasks,
            crate::scheduler::Scheduler {
                sessions: state.sessions.clone(),
                escalations: state.escalations.clone(),
                heartbeat: self.scheduler_heartbeat.clone(),
                metrics: state.metrics.clone(),
            },
            tick,
            shutdown.clone(),
        );
        let sender = crate::escalation::mailer::spawn(
            &tasks,
            Outbox {
                config: state.config.clone(),
                store: state.store.clone(),
                wake: self.outbox_wake,
                metrics: state.metrics.clone(),
            },
            self.mailer,
            shutdown.clone(),
        );
        let jobs = crate::jobs::Jobs {
            config: state.config.clone(),
            store: state.store.clone(),
            metrics: state.metrics.clone(),
            mailer: self
                .jobs_mailer
                .map(|m| Arc::new(tokio::sync::Mutex::new(m))),
            instance: ulid::Ulid::new().to_string(),
        };
        // A job scheduler that cannot start must not keep findings from
        // being delivered and escalated: the daemon serves on, and says so.
        if let Err(e) = crate::jobs::start(jobs, &tasks, shutdown.clone()).await {
            tracing::error!(error = %e, "calendar jobs ([schedule]) not started");
        }
        let supervisor = crate::supervisor::spawn(
            &tasks,
            state.hub.clone(),
            self.scheduler_heartbeat,
            tick,
            shutdown.clone(),
        );

        let handle = axum_server::Handle::new();
        let drain = {
            let (state, handle) = (state.clone(), handle.clone());
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                shutdown.cancelled().await;
                drain(&state, &handle).await;
            })
        };
        let header_read_timeout = state.config.server.header_read_timeout;
        let mut server = axum_server::from_tcp(self.listener)?
            .handle(handle)
            // Slow-loris: a connection that does not deliver a request's
            // headers in time is closed instead of held open.
            .first_request_timeout(header_read_timeout);
        // hyper runs the same timer while a keep-alive connection waits
        // for its next request: it is also the idle timeout.
        server
            .http_builder()
            .http1()
            .header_read_timeout(header_read_timeout);
        // The peer address reaches the middleware that resolves the client
        // address.
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        // Each peer's connections are counted while open; small frames (a
        // notification, an ack) go out at once instead of waiting for the
        // peer's delayed ACK (Nagle).
        let acceptor = CappedAcceptor::new(self.limits);
        match self.tls {
            None => {
                server.acceptor(acceptor).serve(service).await?;
            }
            Some(rustls) => {
                let acceptor = RustlsAcceptor::new(rustls).acceptor(acceptor);
                server.acceptor(acceptor).serve(service).await?;
            }
        }
        // Work already started finishes: the scheduler's and the sender's
        // current pass commit before the pool closes.
        let _ = drain.await;
        let _ = scheduler.await;
        let _ = sender.await;
        let _ = supervisor.await;
        // Nothing can offer a write any more: the group commit commits what
        // is queued and ends.
        self.stop_writes.cancel();
        tasks.close();
        if tokio::time::timeout(state.config.server.shutdown_timeout, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = tasks.len(),
                "stopping with background work unfinished"
            );
        }
        state.store.close().await;
        Ok(())
    }
}

/// Fetches the JWKS once before serving, so that logins pass from the
/// first request. A daemon that cannot fetch it still starts — refusing
/// every login, not ready (`/readyz`), retrying within seconds — since one
/// that does not start would not escalate findings either. The fetcher,
/// and how many fetches failed so far.
async fn first_jwks_fetch(
    config: &Config,
    keys: Arc<crate::auth::JwksKeys>,
    metrics: Arc<Metrics>,
) -> Result<(crate::jwks::Fetcher, u32), StartError> {
    let fetcher =
        crate::jwks::Fetcher::new(&config.auth, keys, metrics).map_err(StartError::Auth)?;
    let failures = match fetcher.refresh().await {
        Ok(_) => 0,
        Err(e) => {
            tracing::error!(
                error = %e,
                "auth.jwks_url: no keys at start; every login is refused until a fetch succeeds (retrying)"
            );
            1
        }
    };
    Ok((fetcher, failures))
}

/// Builds the state around a Socket.IO instance of any adapter, attaches
/// the namespace and layers Socket.IO onto the HTTP router. Returns the
/// adapter's start-up result (a future for cluster adapters, to await).
fn wire<A: Adapter + DefinedAdapter>(
    layer: SocketIoLayer<A>,
    io: SocketIo<A>,
    state_for: &dyn Fn(Hub) -> AppState,
) -> (axum::Router, AppState, A::InitRes) {
    let state = state_for(Hub::new(io.clone()));
    let joined = realtime::attach(&io, state.clone());
    (
        crate::http::router(state.clone()).layer(layer),
        state,
        joined,
    )
}

/// Stops accepting, tells connected viewers (so they reconnect elsewhere),
/// disconnects them and lets in-flight requests finish within
/// `server.shutdown_timeout`.
async fn drain(state: &AppState, handle: &axum_server::Handle<SocketAddr>) {
    tracing::info!("draining");
    state
        .hub
        .emit_all(
            crate::realtime::events::SYSTEM_ALERT,
            serde_json::json!({
                "message": "readbackd is shutting down; reconnect to continue",
                "level": "info",
                "reason": "shutdown",
                "timestamp": crate::clock::Timestamp::now(),
            }),
        )
        .await;
    handle.graceful_shutdown(Some(state.config.server.shutdown_timeout));
    state.hub.close().await;
}
