//! The identity provider's key set (JWKS), kept current.
//!
//! Owns: fetching `auth.jwks_url` — once at start, every
//! `auth.jwks_refresh`, sooner (backing off) after a failed fetch, and when
//! a token naming an unknown `kid` asks for it (rate-limited by
//! [`JwksKeys`]) — over HTTPS (plain HTTP only to loopback or when
//! `auth.jwks_allow_plaintext` says so), within `auth.jwks_timeout` and
//! `auth.jwks_max_bytes`, without following redirects; handing each
//! document to the verifier's key set; logging and counting each outcome.
//! Never: decide which published keys are usable (`auth` does), drop the
//! keys it has because a fetch failed, or stop the daemon: without keys it
//! refuses logins and keeps trying.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::ACCEPT;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Installed, JwksKeys};
use crate::config::AuthConfig;
use crate::metrics::Metrics;

/// Why a fetch brought no keys. The previous keys, if any, stay in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot fetch the JWKS: {0}")]
    Unreachable(String),
    #[error("the JWKS server answered HTTP {0}")]
    Status(u16),
    #[error("the JWKS is larger than auth.jwks_max_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("the JWKS is not usable: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The `outcome` label of `readback_jwks_refresh_total`.
    fn outcome(&self) -> &'static str {
        match self {
            FetchError::Unreachable(_) => "unreachable",
            FetchError::Status(_) => "http_status",
            FetchError::TooLarge(_) => "too_large",
            FetchError::Invalid(_) => "invalid",
        }
    }
}

/// Fetches `auth.jwks_url` into the verifier's key set.
pub struct Fetcher {
    client: reqwest::Client,
    url: reqwest::Url,
    max_bytes: usize,
    refresh: Duration,
    keys: Arc<JwksKeys>,
    metrics: Arc<Metrics>,
}

/// The first retry after a failed fetch; each further one waits twice as
/// long, up to `auth.jwks_refresh`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

impl Fetcher {
    pub fn new(
        config: &AuthConfig,
        keys: Arc<JwksKeys>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let url = config
            .jwks_url
            .as_deref()
            .ok_or("auth.jwks_url is not set")?;
        let url = reqwest::Url::parse(url).map_err(|e| format!("auth.jwks_url: {e}"))?;
        let client = reqwest::Client::builder()
            .connect_timeout(config.jwks_timeout)
            .timeout(config.jwks_timeout)
            // A redirect could lead from https:// to plain http://, or to a
            // host nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(url.scheme() == "https")
            .user_agent(concat!("readbackd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("auth.jwks_url: {}", chain(&e)))?;
        Ok(Self {
            client,
            url,
            max_bytes: config.jwks_max_bytes,
            refresh: config.jwks_refresh,
            keys,
            metrics,
        })
    }

    /// Fetches the key set once and, when it holds a usable key, verifies
    /// tokens with its keys from now on. Logged and counted either way.
    pub async fn refresh(&self) -> Result<Installed, FetchError> {
        let fetch = self.keys.fetch_starting();
        let result = match self.fetch().await {
            Ok(document) => self.keys.install(&document).map_err(FetchError::Invalid),
            Err(e) => Err(e),
        };
        // Counted and logged before the logins waiting for this fetch look
        // again.
        let result = self.report(result);
        self.keys.fetch_finished(fetch);
        result
    }

    fn report(&self, result: Result<Installed, FetchError>) -> Result<Installed, FetchError> {
        match result {
            Ok(installed) => {
                self.metrics.jwks_refreshed("ok");
                self.metrics
                    .jwks_keys
                    .set(i64::try_from(installed.kids.len()).unwrap_or(i64::MAX));
                if installed.changed {
                    tracing::info!(url = %self.url, kids = ?installed.kids, "JWKS keys in use");
                } else {
                    tracing::debug!(url = %self.url, "JWKS unchanged");
                }
                if !installed.skipped.is_empty() {
                    tracing::warn!(url = %self.url, skipped = ?installed.skipped, "JWKS keys left out");
                }
                Ok(installed)
            }
            Err(e) => {
                self.metrics.jwks_refreshed(e.outcome());
                tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed; the keys already fetched stay in use");
                Err(e)
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .send()
            .await
            .map_err(|e| FetchError::Unreachable(chain(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let too_large = FetchError::TooLarge(self.max_bytes);
        if response
            .content_length()
            .is_some_and(|length| length > self.max_bytes as u64)
        {
            return Err(too_large);
        }
        // Read piece by piece, so a server that sends more than it
        // announced (or announced nothing) is cut off at the limit.
        let mut body = Vec::new();
        while let Some(piece) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Unreachable(chain(&e)))?
        {
            if body.len() + piece.len() > self.max_bytes {
                return Err(too_large);
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    /// Keeps the key set current until `shutdown`: every
    /// `auth.jwks_refresh`, sooner when a token asks, and after
    /// `failures` failed fetches (the one at start, say) a retry within
    /// seconds.
    pub fn spawn(
        self,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
        mut failures: u32,
    ) -> JoinHandle<()> {
        tasks.spawn(async move {
            loop {
                let wait = match failures {
                    0 => self.refresh,
                    n => FIRST_RETRY
                        .saturating_mul(1 << (n - 1).min(16))
                        .min(self.refresh),
                };
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                    () = self.keys.refresh_wanted() => {}
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = self.refresh() => {
                        failures = match result {
                            Ok(_) => 0,
                            Err(_) => failures.saturating_add(1),
                        };
                    }
                }
            }
        })
    }
}

/// An error with its causes: reqwest's own text names only the URL.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
