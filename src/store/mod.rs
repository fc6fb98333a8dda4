//! The database: SQLite (embedded default) or PostgreSQL, one set of queries.
//!
//! Owns: opening the pool from `database.url`, durability settings (SQLite
//! WAL with `synchronous=FULL`), the embedded migrations, write
//! transactions, and the SQL for each table (one file per table group).
//! Both databases run the same SQL through sqlx's `Any` driver: times are
//! integer milliseconds and states are text, so nothing dialect-specific is
//! needed beyond the DDL in `migrations/<dialect>/`.
//! Never: decide business rules — callers pass plain values and get plain
//! values back.
// SQL is written here and nowhere else (clippy.toml forbids it elsewhere).
#![allow(clippy::disallowed_methods)]

pub mod audit;
pub mod escalation;
pub mod group_commit;
pub mod jobs;
pub mod notifications;
pub mod reports;
pub mod revocations;
pub mod sessions;

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, AssertSqlSafe, Executor, SqlSafeStr, Transaction};

use crate::config::DatabaseConfig;

/// Which database the URL named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A database failure, split by what the caller should tell its client.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now: callers answer 503.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// Anything else: a bug or a broken database, callers answer 500.
    #[error("database error: {0}")]
    Query(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open database: {0}")]
    Open(String),
    /// The schema is not the one this binary was built for (never
    /// migrated, behind, or ahead): a command that only reads refuses
    /// rather than migrating.
    #[error("{0}")]
    Schema(String),
}

impl StoreError {
    /// Whether the database could not be reached (rather than refused
    /// what was asked): worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        use sqlx::migrate::MigrateError;
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Migrate(
                MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _),
            ) => is_unreachable(e),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        let error = if is_unreachable(&error) {
            StoreError::Unavailable(error)
        } else {
            StoreError::Query(error)
        };
        crate::metrics::database_error(match error {
            StoreError::Unavailable(_) => "unavailable",
            _ => "query",
        });
        error
    }
}

/// Whether an error means the database cannot be reached right now.
fn is_unreachable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // PostgreSQL: connection exceptions (08), no room for another
        // connection (53), shutting down (57P); SQLite: busy or locked
        // beyond the busy timeout, or the file cannot be opened.
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || matches!(c.as_ref(), "5" | "6" | "14")
        }),
        _ => false,
    }
}

/// One migration, embedded in the binary in both dialects.
struct Embedded {
    version: i64,
    description: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Embedded {
            version: $version,
            description: $name,
            sqlite: include_str!(concat!("../../migrations/sqlite/", $file)),
            postgres: include_str!(concat!("../../migrations/postgres/", $file)),
        }
    };
}

/// The embedded migrations, oldest first; the last one's version is the
/// schema this binary reads and writes.
const MIGRATIONS: &[Embedded] = &[
    migration!(1, "core", "0001_core.sql"),
    migration!(2, "sessions", "0002_sessions.sql"),
    migration!(3, "escalation", "0003_escalation.sql"),
    migration!(4, "realtime", "0004_realtime.sql"),
    migration!(5, "audit guards", "0005_audit_guards.sql"),
    migration!(6, "revocations", "0006_revocations.sql"),
    migration!(7, "job runs", "0007_job_runs.sql"),
];

impl Store {
    /// Opens a pool. For SQLite the file (and its directory) is created if
    /// missing; every connection gets WAL, `synchronous=FULL` (a commit is
    /// on disk before it returns) and a busy timeout.
    pub async fn connect(config: &DatabaseConfig) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if config.url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(&config.url)?)
        } else {
            (Backend::Postgres, config.connect_url())
        };
        let options: AnyConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Open(e.to_string()))?;
        let mut pool = AnyPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Sqlite {
            pool = pool.after_connect(|conn, _meta| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        // Connect lazily: a server that is started before its database
        // answers `readyz` with 503 instead of refusing to start.
        let pool = pool.connect_lazy_with(options);
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Opens a pool on a database that must already exist: for SQLite,
    /// neither the file nor its directory is created (a mistyped path is
    /// refused instead of leaving an empty database behind).
    pub async fn connect_existing(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let mut config = config.clone();
        if config.url.starts_with("sqlite:") && !config.url.contains("mode=") {
            let separator = if config.url.contains('?') { '&' } else { '?' };
            config.url = format!("{}{separator}mode=rw", config.url);
        }
        Self::connect(&config).await
    }

    /// Checks, without changing anything, that the schema is exactly the
    /// one this binary was built for: every embedded migration applied and
    /// none unknown to it. For commands that only read, which must never
    /// migrate (they may run against a replica, a restored copy, or a
    /// database a newer readbackd serves).
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let exists = match self.backend {
            Backend::Sqlite => {
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
            }
            Backend::Postgres => {
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
            }
        };
        let tables: i64 = sqlx::query_scalar(exists).fetch_one(&self.pool).await?;
        let current = MIGRATIONS.last().map_or(0, |m| m.version);
        let migrate = "run `readbackd migrate` (or start `readbackd serve`, which migrates) first";
        if tables == 0 {
            return Err(StoreError::Schema(format!(
                "the database has no readback schema (never migrated); {migrate}"
            )));
        }
        let applied: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success = TRUE ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        if let Some(&newer) = applied.iter().find(|v| **v > current) {
            return Err(StoreError::Schema(format!(
                "the database schema has migration {newer}, newer than this readbackd knows \
                 (it reads schema {current}): use the readbackd that migrated it"
            )));
        }
        if let Some(missing) = MIGRATIONS.iter().find(|m| !applied.contains(&m.version)) {
            return Err(StoreError::Schema(format!(
                "the database schema lacks migration {} ({}), this readbackd reads schema {current}; {migrate}",
                missing.version, missing.description
            )));
        }
        Ok(())
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let migrations = MIGRATIONS
            .iter()
            .map(|m| {
                let sql = match self.backend {
                    Backend::Sqlite => m.sqlite,
                    Backend::Postgres => m.postgres,
                };
                Migration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    AssertSqlSafe(sql).into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Starts a write transaction. On SQLite it takes the write lock at
    /// once (`BEGIN IMMEDIATE`), so two writers queue on the busy timeout
    /// instead of failing when a read turns into a write.
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Starts a write transaction, as [`Store::begin`] does, on a connection
    /// the caller already holds: for work that must not wait for the pool
    /// at the moment it records something (the outbox sender after the SMTP
    /// server's `250`).
    pub async fn begin_on<'c>(
        &self,
        conn: &'c mut sqlx::pool::PoolConnection<Any>,
    ) -> Result<Transaction<'c, Any>, StoreError> {
        use sqlx::Connection;
        Ok(match self.backend {
            Backend::Sqlite => (**conn).begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => (**conn).begin().await?,
        })
    }

    /// A connection for reads outside a transaction.
    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<Any>, StoreError> {
        Ok(self.pool.acquire().await?)
    }

    /// Readiness: one round trip.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `sqlite://path` with the directory created and `mode=rwc` added.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !query.contains("mode=")
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
    }
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// Builds `$first, $first+1, ...` placeholders for an `IN (...)` list.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}
