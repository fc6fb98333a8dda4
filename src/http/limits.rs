//! Connection limits at the edge: who the client is, and how much it may
//! hold open.
//!
//! Owns: [`Limits`], the one per daemon that the acceptor and the
//! middleware share; [`CappedAcceptor`], which counts the TCP connections
//! of each peer that is not a trusted proxy (`server.max_connections_per_ip`)
//! for as long as they are open; and [`admit`], the outermost middleware,
//! which resolves every request's [`ClientAddr`](crate::client_addr::ClientAddr) once (proxy-aware only for
//! `server.trusted_proxies`) into its extensions for the handlers, the
//! Socket.IO handshake and the audit rows, and refuses with `429`
//! problem+json what is over a cap: a connection over its peer's share,
//! an Engine.IO handshake over its client's share of sessions (or of
//! sessions still waiting to authenticate,
//! `server.max_pending_sessions_per_ip`), an API request over a proxied
//! client's share of requests in flight.
//! Never: trust a forwarding header outside [`TrustedProxies`], or count a
//! trusted proxy's own TCP connections against it (they carry many
//! clients; behind it the caps apply to the forwarded address).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_http::add_extension::AddExtension;

use super::error::ApiError;
use crate::client_addr::{AddressSlots, SessionPlaces, Slot, TrustedProxies};
use crate::config::ServerConfig;
use crate::limits::RefusedLogins;
use crate::metrics::Metrics;

/// The caps, the trusted proxies and what each address holds; cheap to
/// clone.
#[derive(Clone)]
pub struct Limits {
    proxies: Arc<TrustedProxies>,
    per_address: usize,
    pending_per_address: usize,
    /// TCP connections of peers that are not trusted proxies.
    connections: AddressSlots,
    /// Engine.IO sessions, per client address.
    sessions: AddressSlots,
    /// Engine.IO sessions without an authenticated CONNECT yet.
    unauthenticated: AddressSlots,
    /// API requests in flight from clients behind a trusted proxy.
    requests: AddressSlots,
    /// Addresses held back for presenting bad tokens too often.
    refused_logins: Arc<RefusedLogins>,
    metrics: Arc<Metrics>,
}

impl Limits {
    pub fn from_config(
        server: &ServerConfig,
        refused_logins: Arc<RefusedLogins>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            proxies: Arc::new(TrustedProxies::new(
                server.trusted_proxies.clone(),
                server.client_ip_header,
            )),
            per_address: server.max_connections_per_ip,
            pending_per_address: server.max_pending_sessions_per_ip,
            connections: AddressSlots::default(),
            sessions: AddressSlots::default(),
            unauthenticated: AddressSlots::default(),
            requests: AddressSlots::default(),
            refused_logins,
            metrics,
        }
    }

    /// The refusal of a connection, session or request over the cap
    /// `cap` (as the metric names it).
    fn over_cap(&self, client: IpAddr, cap: &'static str) -> ApiError {
        self.metrics.connection_refused(cap);
        ApiError::TooManyConnections(format!(
            "too many connections from {client} (server.max_connections_per_ip = {}); close one or retry later",
            self.per_address
        ))
    }

    /// The places of a new Engine.IO session of `client`.
    fn session_places(&self, client: IpAddr) -> Result<SessionPlaces, ApiError> {
        let session = self
            .sessions
            .try_take(client, self.per_address)
            .ok_or_else(|| self.over_cap(client, "connections"))?;
        let waiting = self
            .unauthenticated
            .try_take(client, self.pending_per_address)
            .ok_or_else(|| {
                self.metrics.connection_refused("pending");
                ApiError::TooManyConnections(format!(
                    "too many sessions from {client} waiting to authenticate (server.max_pending_sessions_per_ip = {}); retry later",
                    self.pending_per_address
                ))
            })?;
        Ok(SessionPlaces::new(session, waiting))
    }
}

/// What the acceptor decided about a connection, in each of its requests'
/// extensions: over its peer's cap, every request is answered `429`.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    over_cap: bool,
}

/// Accepts TCP connections (without Nagle's delay: small frames go out at
/// once), counting each against its peer's cap while it is open.
#[derive(Clone)]
pub struct CappedAcceptor {
    limits: Limits,
}

impl CappedAcceptor {
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    fn admit(&self, stream: &TcpStream) -> io::Result<(Option<Slot>, Accepted)> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?.ip().to_canonical();
        if self.limits.proxies.trusts(peer) {
            return Ok((None, Accepted { over_cap: false }));
        }
        Ok(
            match self
                .limits
                .connections
                .try_take(peer, self.limits.per_address)
            {
                Some(slot) => (Some(slot), Accepted { over_cap: false }),
                None => (None, Accepted { over_cap: true }),
            },
        )
    }
}

impl<S> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = Counted;
    type Service = AddExtension<S, Accepted>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(&stream).map(|(slot, accepted)| {
            (
                Counted {
                    stream,
                    _slot: slot,
                },
                AddExtension::new(service, accepted),
            )
        }))
    }
}

/// A TCP connection holding its place in its peer's count until it is
/// dropped (also after an upgrade to WebSocket, which keeps the stream).
pub struct Counted {
    stream: TcpStream,
    _slot: Option<Slot>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Where Socket.IO is served (socketioxide's default path).
const SOCKET_IO_PATH: &str = "/socket.io";

/// An Engine.IO handshake: a GET on the Socket.IO path without a session
/// id (long-polling's first request, or a WebSocket without a prior
/// polling session).
fn is_handshake(request: &Request) -> bool {
    request.method() == Method::GET
        && !request
            .uri()
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "sid"))
}

/// The outermost middleware: resolves the client address and applies the
/// caps (see the module documentation).
pub async fn admit(State(limits): State<Limits>, mut request: Request, next: Next) -> Response {
    let Some(peer) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
    else {
        // Served without peer addresses (not by `Application`): nothing to
        // count by.
        return next.run(request).await;
    };
    let client = limits.proxies.resolve(peer, request.headers());
    request.extensions_mut().insert(client);
    if request
        .extensions()
        .get::<Accepted>()
        .is_some_and(|accepted| accepted.over_cap)
    {
        let mut response = limits.over_cap(client.ip, "connections").into_response();
        // The connection itself is over the cap: not kept for another try.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let path = request.uri().path();
    let socket_io = path == SOCKET_IO_PATH || path.starts_with("/socket.io/");
    // What may carry a token waits while its address is held; the requests
    // of Engine.IO sessions already open do not.
    if (!socket_io || is_handshake(&request))
        && let Some(wait) = limits.refused_logins.hold(client.ip)
    {
        limits.metrics.held_for_refused_logins.inc();
        tokio::time::sleep(wait).await;
    }
    if socket_io {
        if is_handshake(&request) {
            match limits.session_places(client.ip) {
                Ok(places) => {
                    request.extensions_mut().insert(Arc::new(places));
                }
                Err(refused) => {
                    // A login attempt refused as much as a bad token is:
                    // an address looping over its cap is held too.
                    limits.refused_logins.refused(client.ip);
                    tracing::info!(client = %client.ip, "Engine.IO handshake over the cap; refused");
                    return refused.into_response();
                }
            }
        }
        return next.run(request).await;
    }
    // From a direct peer its TCP connections bound its requests already.
    let _in_flight = match client.proxy {
        Some(_) => match limits.requests.try_take(client.ip, limits.per_address) {
            Some(slot) => Some(slot),
            None => return limits.over_cap(client.ip, "requests").into_response(),
        },
        None => None,
    };
    next.run(request).await
}
