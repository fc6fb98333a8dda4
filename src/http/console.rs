//! `/console`: the operator console, a single page served from the binary.
//!
//! Owns: serving the page's files (embedded at build time, so nothing is
//! read from disk or fetched from the internet at run time) with headers
//! that keep the page to its own origin.
//! Never: decide what the page may show — it reads everything through the
//! HTTP API and Socket.IO with the token pasted into it, and those decide
//! per role.

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../console/index.html");
const STYLE: &str = include_str!("../../console/console.css");
const SCRIPT: &str = include_str!("../../console/console.js");
const SOCKET_IO: &str = include_str!("../../console/vendor/socket.io.min.js");

/// Scripts and styles from this origin only, no inline script, no framing;
/// the page talks to its own origin (HTTP and WebSocket) only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

fn file(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static(cache)),
            (CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The console's routes; no token is needed to load the page itself.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    // The page and its script change with the binary: never cache them
    // past a restart. The vendored library is versioned in its name.
    Router::new()
        .route(
            "/console",
            get(async || file(INDEX, "text/html; charset=utf-8", "no-store")),
        )
        .route(
            "/console/console.css",
            get(async || file(STYLE, "text/css; charset=utf-8", "no-store")),
        )
        .route(
            "/console/console.js",
            get(async || file(SCRIPT, "text/javascript; charset=utf-8", "no-store")),
        )
        .route(
            "/console/vendor/socket.io-4.8.1.min.js",
            get(async || {
                file(
                    SOCKET_IO,
                    "text/javascript; charset=utf-8",
                    "public, max-age=86400",
                )
            }),
        )
}
