//! One test's world: a temporary directory, a fresh database (a SQLite file
//! in that directory, or a new database on the test PostgreSQL), the config
//! file the daemons start from, and read-only looks at what they stored —
//! above all the audit log, which most stories check.

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

use super::{Daemon, RedisServer, SECRET, WAIT, readbackd};

/// Which database a story runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// How the daemons of a cluster story share their rooms. Both keep their
/// data in one PostgreSQL database; only the adapter differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// `[cluster] redis_url`: a Redis server started for the story.
    Redis,
    /// No Redis: the PostgreSQL adapter (LISTEN/NOTIFY).
    Postgres,
}

/// A temporary directory, database and configuration for one test.
pub struct TestEnv {
    pub db: Db,
    pub dir: tempfile::TempDir,
    pub database_url: String,
    extra_config: String,
    /// The keys of the `[auth]` table that name how tokens are verified
    /// (the harness's HS256 secret unless a story says otherwise, e.g.
    /// `jwks_url = …`): the table is written here, so `extra` cannot add
    /// to it.
    pub auth: String,
    /// `logging.level` written to the config file.
    pub log_level: String,
    /// Further keys of the `[logging]` table (`dir`, `retention`...): the
    /// table is written here, so `extra` cannot add to it.
    pub logging: String,
    /// The Redis server of a [`Cluster::Redis`] story.
    pub redis: Option<RedisServer>,
}

impl TestEnv {
    pub async fn new(db: Db) -> Self {
        Self::with_config(db, "").await
    }

    /// `extra` is appended to the generated TOML (whole sections only).
    pub async fn with_config(db: Db, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let database_url = match db {
            Db::Sqlite => format!("sqlite://{}/readback.db", dir.path().display()),
            Db::Postgres => fresh_postgres_database().await,
        };
        Self {
            db,
            dir,
            database_url,
            extra_config: extra.to_string(),
            auth: format!("jwt_secret = \"{SECRET}\""),
            log_level: "readback=debug,info".into(),
            logging: String::new(),
            redis: None,
        }
    }

    /// For daemons that act as one: a PostgreSQL database, and with
    /// [`Cluster::Redis`] a Redis server (kept in `redis`) named before
    /// `extra` in the config.
    pub async fn cluster(backend: Cluster, extra: &str) -> Self {
        let redis = match backend {
            Cluster::Redis => Some(RedisServer::start().await),
            Cluster::Postgres => None,
        };
        let config = match &redis {
            Some(redis) => format!("{}\n{extra}", redis.config()),
            None => extra.to_string(),
        };
        let mut env = Self::with_config(Db::Postgres, &config).await;
        env.redis = redis;
        env
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("readback.toml")
    }

    pub fn write_config(&self) -> PathBuf {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[auth]\n{}\nleeway = \"0s\"\n\n\
             [database]\nurl = \"{}\"\n\n[logging]\nlevel = \"{}\"\n{}\n{}\n",
            self.auth, self.database_url, self.log_level, self.logging, self.extra_config
        );
        let path = self.config_path();
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// Starts a daemon on the current config (written anew each time, so a
    /// restart sees what the test changed).
    pub async fn start(&self) -> Daemon {
        self.start_with_env(&[]).await
    }

    /// Refused logins and reads are written once per `audit.refusal_window`
    /// and `audit.read_window`: short in tests, so a test waits
    /// milliseconds for them (`refused_logins`).
    pub async fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let mut env = env.to_vec();
        for window in [
            "READBACK_AUDIT__REFUSAL_WINDOW",
            "READBACK_AUDIT__READ_WINDOW",
        ] {
            if !env.iter().any(|(k, _)| *k == window) {
                env.push((window, "100ms"));
            }
        }
        Daemon::start_with_env(&self.write_config(), &env).await
    }

    /// Waits until the `auth.refused` rows count `expected` refusals in all
    /// (each row carries the count of its source, channel and reason in
    /// its window), then returns the rows' details.
    #[allow(clippy::disallowed_methods)] // assertions read what the daemon stored
    pub async fn refused_logins(&self, expected: u64) -> Vec<Value> {
        use sqlx::Row;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut conn = self.sql().await;
            let details: Vec<Value> = sqlx::query(
                "SELECT detail FROM audit_log WHERE action = 'auth.refused' ORDER BY seq",
            )
            .fetch_all(&mut conn)
            .await
            .expect("read auth.refused rows")
            .iter()
            .map(|row| serde_json::from_str(&row.get::<String, _>(0)).expect("JSON detail"))
            .collect();
            let total: u64 = details
                .iter()
                .map(|d| d["count"].as_u64().unwrap_or(1))
                .sum();
            if total >= expected {
                assert_eq!(total, expected, "more refusals than expected: {details:#?}");
                return details;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out: {total} refusals audited, waited for {expected}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `readbackd audit verify` on this config: whether it passed, and what
    /// it printed.
    pub fn audit_verify(&self) -> (bool, String) {
        let config = self.config_path();
        let config = config.to_str().expect("a UTF-8 temporary path");
        let (code, output) = readbackd(&["audit", "verify", "--config", config]);
        (code == Some(0), output)
    }

    /// A direct connection to the test database, for assertions on what
    /// was stored.
    pub async fn sql(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&self.database_url)
            .await
            .expect("connect to the test database")
    }

    /// Waits until `sql` (a COUNT with one text parameter) reaches
    /// `at_least`: for what the daemon records just after it answers.
    pub async fn wait_count(&self, sql: &str, arg: &str, at_least: i64) {
        self.wait_until(&format!("{sql} ({arg})"), at_least, || self.count(sql, arg))
            .await;
    }

    pub async fn count(&self, sql: &str, arg: &str) -> i64 {
        self.count_with(sql, &[arg]).await
    }

    /// The audit rows that `audit` selects (an action, or an [`Audit`]).
    pub async fn audit_count(&self, audit: impl Into<Audit>) -> i64 {
        let audit = audit.into();
        let (sql, args) = audit.query();
        self.count_with(&sql, &args).await
    }

    /// Waits until at least `at_least` audit rows match `audit`: the
    /// daemon audits some things just after it answers.
    pub async fn wait_audit(&self, audit: impl Into<Audit>, at_least: i64) {
        let audit = audit.into();
        let (sql, args) = audit.query();
        self.wait_until(&format!("{sql} {args:?}"), at_least, || {
            self.count_with(&sql, &args)
        })
        .await;
    }

    #[allow(clippy::disallowed_methods)] // assertions read what the daemon stored
    async fn count_with(&self, sql: &str, args: &[&str]) -> i64 {
        use sqlx::Row;
        let mut conn = self.sql().await;
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
        for arg in args {
            query = query.bind(arg.to_string());
        }
        query
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get::<i64, _>(0)
    }

    async fn wait_until<F: Future<Output = i64>>(
        &self,
        what: &str,
        at_least: i64,
        count: impl Fn() -> F,
    ) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let count = count().await;
            if count >= at_least {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out: {what} is {count}, waited for {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Which audit rows to count: an action and optionally the outcome, the
/// notification, session or user, and a pattern in the detail. A value
/// with `%` in it is matched with `LIKE`.
#[derive(Debug, Clone)]
pub struct Audit {
    columns: Vec<(&'static str, String)>,
}

impl Audit {
    pub fn action(action: &str) -> Self {
        Self {
            columns: vec![("action", action.to_string())],
        }
    }

    pub fn outcome(self, outcome: &str) -> Self {
        self.and("outcome", outcome)
    }

    pub fn notification(self, id: &str) -> Self {
        self.and("notification_id", id)
    }

    pub fn session(self, id: &str) -> Self {
        self.and("session_id", id)
    }

    pub fn user(self, id: &str) -> Self {
        self.and("user_id", id)
    }

    pub fn detail(self, pattern: &str) -> Self {
        self.and("detail", pattern)
    }

    fn and(mut self, column: &'static str, value: &str) -> Self {
        self.columns.push((column, value.to_string()));
        self
    }

    fn query(&self) -> (String, Vec<&str>) {
        let conditions: Vec<String> = self
            .columns
            .iter()
            .enumerate()
            .map(|(i, (column, value))| {
                let op = if value.contains('%') { "LIKE" } else { "=" };
                format!("{column} {op} ${}", i + 1)
            })
            .collect();
        (
            format!(
                "SELECT COUNT(*) FROM audit_log WHERE {}",
                conditions.join(" AND ")
            ),
            self.columns
                .iter()
                .map(|(_, value)| value.as_str())
                .collect(),
        )
    }
}

impl From<&str> for Audit {
    fn from(action: &str) -> Self {
        Self::action(action)
    }
}

/// An administrative connection to the PostgreSQL named by
/// `READBACK_TEST_POSTGRES_URL` (the test command starts one).
pub async fn postgres_admin() -> sqlx::AnyConnection {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    sqlx::any::install_default_drivers();
    sqlx::AnyConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL")
}

fn postgres_admin_url() -> String {
    std::env::var("READBACK_TEST_POSTGRES_URL").expect(
        "READBACK_TEST_POSTGRES_URL is not set: run scripts/test.sh, which starts PostgreSQL",
    )
}

/// Creates an empty database on the test PostgreSQL; its URL.
async fn fresh_postgres_database() -> String {
    use sqlx::Executor;
    let mut conn = postgres_admin().await;
    let name = format!("rb_{}", ulid::Ulid::new().to_string().to_lowercase());
    conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create test database");
    let admin = postgres_admin_url();
    let base = admin.rsplit_once('/').expect("database url with a path").0;
    format!("{base}/{name}")
}
