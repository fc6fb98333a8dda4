//! Liveness, readiness and metrics: unauthenticated, for load balancers,
//! systemd checks and Prometheus.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::error::ApiError;
use crate::metrics::Format;
use crate::state::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when the database answers and, with `auth.jwks_url`, a key set
/// has been fetched (until then every login is refused).
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let ping = state.store.ping().await;
    state.metrics.database_reachable(ping.is_ok());
    ping?;
    if state.verifier.jwks().is_some_and(|keys| !keys.is_loaded()) {
        return Err(ApiError::NotReady(
            "no keys fetched from auth.jwks_url yet".into(),
        ));
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// The metrics in the format the scraper asks for (`Accept`): OpenMetrics
/// for Prometheus, the Prometheus text format for anything else.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> impl IntoResponse {
    // Counted when asked: a gauge moved by connect and disconnect handlers
    // drifts when a client hangs up in the middle of its handshake.
    state
        .metrics
        .connected_sockets
        .set(i64::try_from(state.hub.local_count()).unwrap_or(i64::MAX));
    crate::monitoring::refresh(&state.store, &state.metrics).await;
    let format = Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok()),
    );
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "accept"),
        ],
        state.metrics.render(format),
    )
}
