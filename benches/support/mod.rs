//! What the benchmarks share: a fresh PostgreSQL database for a run, and a
//! store opened and migrated the way the daemon opens it.
// Each benchmark uses a part of this.
#![allow(dead_code)]

use readback::config::DatabaseConfig;
use readback::store::Store;
use sqlx::{AssertSqlSafe, Connection, Executor};

/// Drops and creates the database `name` on the server `admin` (the URL of
/// one of its databases) and returns the new database's URL. The names are
/// fixed so that a run replaces the last run's data instead of adding to it.
pub async fn fresh_postgres_database(admin: &str, name: &str) -> String {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin).await.expect("connect");
    conn.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
        .await
        .expect("drop");
    conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create");
    format!(
        "{}/{name}",
        admin.rsplit_once('/').expect("a database URL").0
    )
}

/// Opens `url` with two connections and brings its schema up to date.
pub async fn open_store(url: &str) -> Store {
    let store = Store::connect(&DatabaseConfig {
        url: url.to_string(),
        max_connections: 2,
        ..DatabaseConfig::default()
    })
    .await
    .expect("open");
    store.migrate().await.expect("migrate");
    store
}
