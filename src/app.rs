//! Start-up: the one place where the application is assembled.
//!
//! Owns: [`AppState`] (built once, shared by HTTP and Socket.IO handlers)
//! and [`Application`], which `main` and the tests both use: `build` binds
//! the listener and migrates, `run_until_stopped` serves until the shutdown
//! token fires and then drains.
//! Never: read configuration or the environment itself — it is handed a
//! validated [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;

use socketioxide::SocketIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::{self, Hub};
use crate::store::{Store, StoreError};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub verifier: Arc<Verifier>,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Auth(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    state: AppState,
}

impl Application {
    /// Connects and migrates the database, wires HTTP and Socket.IO, and
    /// binds the listener (so the port is known before serving starts).
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let store = Store::connect(&config.database).await?;
        store.migrate().await?;
        let verifier = Verifier::from_config(&config.auth).map_err(StartError::Auth)?;
        let (socket_layer, io) = SocketIo::builder()
            .max_payload(config.server.max_socket_message_bytes)
            .build_layer();
        let state = AppState {
            config: Arc::new(config),
            store,
            verifier: Arc::new(verifier),
            hub: Hub::new(io.clone()),
            metrics: Arc::new(Metrics::default()),
        };
        realtime::attach(&io, state.clone());
        let router = crate::http::router(state.clone())
            .layer(socket_layer)
            .layer(crate::http::cors(&state.config.server.cors_origins));
        let listen = state.config.server.listen.clone();
        let listener = TcpListener::bind(&listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        Ok(Self {
            listener,
            router,
            state,
        })
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
        let scheduler = crate::scheduler::spawn(self.state.clone(), shutdown.clone());
        let hub = self.state.hub.clone();
        let drain = async move {
            shutdown.cancelled().await;
            hub.close().await;
        };
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(drain)
            .await?;
        // A tick in progress finishes its transaction before the pool closes.
        let _ = scheduler.await;
        self.state.store.close().await;
        Ok(())
    }
}
