//! Test harness: the real `readbackd` binary on a free port against a real
//! database (a fresh SQLite file, or a fresh PostgreSQL database), real
//! HTTP, and real Socket.IO clients (the JavaScript `socket.io-client`,
//! driven through `tests/js/driver.mjs`).
//!
//! One file per part, all re-exported here so a test file says
//! `use common::*`: `env` (the fresh database, the config, counts of what
//! was stored), `daemon` (the process and its command line), `tokens`,
//! `http`, `clients` (the Socket.IO clients), `raw` (a raw WebSocket client
//! for misbehaving ones) and `servers` (SMTP, Redis).
//! The story runners are the macros below.
// Each test crate uses a different part of the harness.
#![allow(dead_code, unused_imports)]

mod clients;
mod daemon;
mod env;
mod http;
mod raw;
mod servers;
mod tokens;

use std::time::Duration;

pub use clients::*;
pub use daemon::*;
pub use env::*;
pub use http::*;
pub use raw::*;
pub use servers::*;
pub use tokens::*;

pub const SECRET: &str = "integration-test-secret-0123456789";
/// How long any wait for the daemon or a client may take before the test
/// fails. Waits end as soon as the awaited thing happens.
pub const WAIT: Duration = Duration::from_secs(15);

/// Sessions short enough to watch expire: idle 3 s, warned 1.5 s before
/// expiry, max lifetime 1 h, activity written at most every 100 ms; the
/// scheduler ticks every `tick`.
pub fn short_sessions(tick: &str) -> String {
    format!(
        "[sessions]\nidle_timeout = \"3s\"\nwarning_before = \"1500ms\"\nmax_lifetime = \"1h\"\n\
         activity_coalesce = \"100ms\"\n\n[scheduler]\ntick = \"{tick}\"\n"
    )
}

/// Runs each named story (an `async fn` of one argument) once per variant,
/// as `story::variant` tests: `stories!({ a => A, b => B }: s1, s2)`.
/// The variants are passed on as one token tree, since a macro cannot
/// repeat them inside the repetition over stories.
#[macro_export]
macro_rules! stories {
    (@story $story:ident { $($variant:ident => $value:expr),+ $(,)? }) => {
        mod $story {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $variant() {
                    super::$story($value).await
                }
            )+
        }
    };
    ($variants:tt: $($story:ident),* $(,)?) => {
        $( $crate::stories!(@story $story $variants); )*
    };
}

/// Runs each named story (an `async fn(Db)`) once per database.
#[macro_export]
macro_rules! both_databases {
    ($($story:ident),* $(,)?) => {
        $crate::stories!(
            { sqlite => $crate::common::Db::Sqlite, postgres => $crate::common::Db::Postgres }:
            $($story),*
        );
    };
}

/// Runs each named cluster story (an `async fn(Cluster)`) once with rooms
/// shared through Redis and once through PostgreSQL.
#[macro_export]
macro_rules! cluster_backends {
    ($($story:ident),* $(,)?) => {
        $crate::stories!(
            { redis => $crate::common::Cluster::Redis, postgres => $crate::common::Cluster::Postgres }:
            $($story),*
        );
    };
}
