//! The HTTP API (`/api/v1`), health endpoints and metrics.
//!
//! Owns: the router — one place that lists every path and who may call it
//! (the extractor in each handler's signature) — and the HTTP error
//! mapping. Handlers stay thin: parse, call the domain, map errors.
//! Never: hold business rules or SQL.

mod admin;
mod audit;
mod console;
pub mod error;
mod extract;
mod health;
pub mod limits;
mod messages;
mod notifications;
mod sessions;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::AppState;
use error::ApiError;

/// Every route of the daemon except Socket.IO's, which the caller layers on
/// (so `server.request_timeout` does not cut Engine.IO long-polling, which
/// holds a GET until there is something to send).
pub fn router(state: AppState) -> Router {
    let request_timeout = state.config.server.request_timeout;
    let api = Router::new()
        .route(
            "/notifications",
            post(notifications::raise).get(notifications::list),
        )
        .route("/notifications/{id}", get(notifications::get))
        .route("/notifications/{id}/cancel", post(notifications::cancel))
        .route("/notifications/{id}/timeline", get(audit::timeline))
        .route("/audit", get(audit::list))
        .route("/reports/acknowledgements", get(audit::acknowledgements))
        .route("/broadcast", post(admin::broadcast))
        .route("/connections", get(admin::connections))
        .route("/users/{user_id}/status", get(admin::user_status))
        .route(
            "/users/{user_id}/connections",
            delete(admin::disconnect_user),
        )
        .route("/me/status", get(admin::me))
        .route("/me/notifications", get(notifications::mine))
        .route("/presence", get(admin::presence))
        .route("/messages", post(messages::send))
        .route("/sessions", get(sessions::list))
        .route(
            "/sessions/{session_id}",
            put(sessions::register)
                .get(sessions::get)
                .delete(sessions::terminate),
        );
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .nest("/api/v1", api)
        .merge(console::routes())
        .fallback(async || ApiError::NoRoute)
        .method_not_allowed_fallback(async || ApiError::MethodNotAllowed)
        .layer(DefaultBodyLimit::max(state.config.server.max_body_bytes))
        // A request not answered in time (a body that never finishes, work
        // stuck on the database) is answered instead of held; its handler
        // is dropped. Streamed bodies (exports) are not bounded by it.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            request_timeout,
        ))
        .layer(axum::middleware::map_response_with_state(
            request_timeout,
            timed_out_as_problem,
        ))
        // Every request gets an id (or keeps the caller's `x-request-id`),
        // carried in its log span and echoed in the response.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                let id = request
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %request.method(), route, request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        .with_state(state)
}

/// The timeout layer's bare `503` as problem+json. Every other `503` of
/// readback is problem+json already; the layer's has no content type.
async fn timed_out_as_problem(
    State(timeout): State<std::time::Duration>,
    response: Response,
) -> Response {
    if response.status() == StatusCode::SERVICE_UNAVAILABLE
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        return ApiError::TimedOut(timeout).into_response();
    }
    response
}

/// CORS for the configured browser origins (HTTP API and Socket.IO polling).
pub fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .allow_credentials(true)
}

/// Request ids: `req-` and a number, unique within this process.
#[derive(Clone, Default)]
struct RequestIds(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        axum::http::HeaderValue::from_str(&format!("req-{n}"))
            .ok()
            .map(RequestId::new)
    }
}
