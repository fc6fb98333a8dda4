//! The cluster adapters: how several daemons share their rooms.
//!
//! Owns: building socketioxide's Redis adapter (`cluster.redis_url`) and
//! PostgreSQL adapter (LISTEN/NOTIFY on the daemons' shared database), with
//! readback's prefix, timeouts and heartbeats.
//! Never: decide which one is used — the composition root does, from the
//! config.

use std::time::Duration;

use socketioxide_postgres::drivers::sqlx::SqlxDriver;
use socketioxide_postgres::{PostgresAdapterConfig, PostgresAdapterCtr};
use socketioxide_redis::drivers::redis::{RedisDriver, redis_client as redis};
use socketioxide_redis::{RedisAdapterConfig, RedisAdapterCtr};
use sqlx::postgres::PgPoolOptions;

/// The Redis adapter on `url`. It needs RESP3 (Redis 7): asked for unless
/// the URL already says which protocol.
pub async fn redis(url: &str) -> Result<RedisAdapterCtr<RedisDriver>, String> {
    let url = if url.contains("protocol=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&protocol=resp3")
    } else {
        format!("{url}?protocol=resp3")
    };
    let client =
        redis::Client::open(url.as_str()).map_err(|e| format!("cluster.redis_url: {e}"))?;
    RedisAdapterCtr::new_with_redis_config(
        &client,
        RedisAdapterConfig::new()
            .with_prefix("readback")
            .with_request_timeout(Duration::from_secs(2)),
    )
    .await
    .map_err(|e| format!("cannot reach Redis: {e}"))
}

/// The PostgreSQL adapter on the daemons' own database: a small pool of
/// its own for LISTEN/NOTIFY and the attachments table.
pub async fn postgres(database_url: &str) -> Result<PostgresAdapterCtr<SqlxDriver>, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await?;
    Ok(PostgresAdapterCtr::new_with_sqlx_config(
        pool,
        PostgresAdapterConfig::new()
            .with_table_name("socketio_attachments")
            .with_prefix("readback")
            .with_hb_interval(Duration::from_secs(2))
            .with_hb_timeout(Duration::from_secs(6))
            .with_request_timeout(Duration::from_secs(2)),
    ))
}
