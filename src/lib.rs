//! readback: makes sure a critical radiology finding reaches a human who
//! acknowledges it.
//!
//! The PACS raises a notification over HTTP ([`http`]); it is stored
//! ([`store`]) before the API answers, delivered over Socket.IO
//! ([`realtime`]) to every socket of its recipient, replayed on reconnect
//! until acknowledged ([`notifications`]), and every step is written to an
//! append-only audit log ([`audit`]). [`app`] assembles the pieces;
//! `src/main.rs` is the `readbackd` command line.

pub mod app;
pub mod audit;
pub mod auth;
pub mod client_addr;
pub mod clock;
pub mod config;
pub mod error;
pub mod escalation;
pub mod http;
pub mod jobs;
pub mod jwks;
pub mod limits;
pub mod metrics;
pub mod monitoring;
pub mod notifications;
pub mod realtime;
pub mod scheduler;
pub mod sessions;
pub mod severity;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod supervisor;
pub mod telemetry;
pub mod transport_security;
pub mod validation;

pub use app::Application;
pub use config::Config;
pub use state::AppState;
