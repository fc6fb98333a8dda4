//! Transmission security: links that would carry findings and credentials
//! in the clear over the network are refused unless the operator allows
//! them, and a PostgreSQL link that asks for TLS verifies the server's
//! certificate and name (`verify-full`), against the test PostgreSQL, which
//! offers TLS with a certificate for 127.0.0.1 from a throwaway CA.

use crate::common::*;
use serde_json::json;

crate::both_databases!(plaintext_links_are_refused_unless_allowed);
crate::stories!({ postgres => crate::common::Db::Postgres }: postgres_tls_verifies_the_server);

/// `check-config` on the test's config with `extra` appended.
async fn check_config(db: Db, extra: &str) -> (Option<i32>, String) {
    let env = TestEnv::with_config(db, extra).await;
    let path = env.write_config();
    readbackd(&[
        "check-config",
        "--config",
        path.to_str().expect("utf-8 path"),
    ])
}

async fn plaintext_links_are_refused_unless_allowed(db: Db) {
    // Each link on its own, first refused, then allowed by its own key.
    let cases = [
        (
            "server.listen",
            "[server]\nlisten = \"0.0.0.0:0\"\n",
            "[server]\nlisten = \"0.0.0.0:0\"\nallow_plaintext = true\n",
        ),
        (
            "smtp.url",
            "[smtp]\nurl = \"smtp://relay.hospital.example:25\"\nfrom = \"rb@hospital.example\"\n",
            "[smtp]\nurl = \"smtp://relay.hospital.example:25\"\nfrom = \"rb@hospital.example\"\nallow_plaintext = true\n",
        ),
        (
            "smtp.url",
            "[smtp]\nurl = \"smtp://relay.hospital.example:587?tls=opportunistic\"\nfrom = \"rb@hospital.example\"\n",
            "[smtp]\nurl = \"smtp://relay.hospital.example:587?tls=required\"\nfrom = \"rb@hospital.example\"\n",
        ),
        (
            "cluster.redis_url",
            "[cluster]\nredis_url = \"redis://cache.hospital.example:6379\"\n",
            "[cluster]\nredis_url = \"rediss://cache.hospital.example:6380\"\n",
        ),
    ];
    for (key, refused, allowed) in cases {
        // The test's own `[server]` table is written first; a second one
        // would be a TOML error, so the listen case replaces it by env.
        let (code, out) = if key == "server.listen" {
            check_listen(db, refused).await
        } else {
            check_config(db, refused).await
        };
        assert_eq!(code, Some(78), "{key} must be refused: {out}");
        assert!(
            out.contains(key) && out.contains("unencrypted"),
            "the refusal names {key}: {out}"
        );
        let (code, out) = if key == "server.listen" {
            check_listen(db, allowed).await
        } else {
            check_config(db, allowed).await
        };
        assert_eq!(code, Some(0), "{key} allowed: {out}");
    }
    // Off loopback with TLS needs no permission.
    let (code, out) = check_config(
        db,
        "[smtp]\nurl = \"smtps://relay.hospital.example\"\nfrom = \"rb@hospital.example\"\n",
    )
    .await;
    assert_eq!(code, Some(0), "{out}");

    // A daemon that was allowed plaintext says so loudly at start.
    let mut env = TestEnv::new(db).await;
    let logs = env.dir.path().join("logs");
    env.logging = format!("dir = \"{}\"\nrotation = \"never\"\n", logs.display());
    let _daemon = env
        .start_with_env(&[
            ("READBACK_SERVER__LISTEN", "0.0.0.0:0"),
            ("READBACK_SERVER__ALLOW_PLAINTEXT", "true"),
        ])
        .await;
    wait_for_log(&logs, &["WARN", "PLAINTEXT", "server.listen"]).await;
}

/// `check-config` with `[server]` keys given as environment overrides.
async fn check_listen(db: Db, table: &str) -> (Option<i32>, String) {
    let env = TestEnv::new(db).await;
    let path = env.write_config();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_readbackd"));
    command.args([
        "check-config",
        "--config",
        path.to_str().expect("utf-8 path"),
    ]);
    for line in table.lines().filter(|l| l.contains('=')) {
        let (key, value) = line.split_once('=').expect("key = value");
        command.env(
            format!("READBACK_SERVER__{}", key.trim().to_uppercase()),
            value.trim().trim_matches('"'),
        );
    }
    let output = command.output().expect("run readbackd");
    (
        output.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

async fn postgres_tls_verifies_the_server(db: Db) {
    let ca = std::env::var("READBACK_TEST_POSTGRES_CA")
        .expect("READBACK_TEST_POSTGRES_CA: the test PostgreSQL's CA (scripts/lib/postgres.sh)");
    let mut env = TestEnv::new(db).await;
    let plain = env.database_url.clone();
    let check = |url: String| {
        let path = env.dir.path().join("check.toml");
        let text = std::fs::read_to_string(env.write_config())
            .expect("config")
            .replace(&plain, &url);
        std::fs::write(&path, text).expect("write");
        readbackd(&[
            "check-config",
            "--connect",
            "--config",
            path.to_str().expect("utf-8"),
        ])
    };

    // `sslmode=require` asks for TLS: the server's certificate is from a CA
    // this host does not trust, so the connection is refused (libpq's
    // `require` would have encrypted to anyone who answered).
    let (code, out) = check(format!("{plain}?sslmode=require"));
    assert_eq!(
        code,
        Some(69),
        "an unverified server must be refused: {out}"
    );

    // Trusting the CA is not enough: the certificate must name the host
    // connected to (127.0.0.2 is the same server, not the certificate's name).
    let other_name = plain.replace("127.0.0.1", "127.0.0.2");
    let (code, out) = check(format!("{other_name}?sslmode=verify-ca&sslrootcert={ca}"));
    assert_eq!(
        code,
        Some(69),
        "a server with another name must be refused: {out}"
    );

    // The right CA and name: the daemon runs over TLS.
    let (code, out) = check(format!("{plain}?sslmode=require&sslrootcert={ca}"));
    assert_eq!(code, Some(0), "a verified server is accepted: {out}");
    env.database_url = format!("{plain}?sslmode=require&sslrootcert={ca}");
    let daemon = env.start().await;
    let http = Http::default();
    let raised = http
        .raise(&daemon, json!({ "userId": "dr-tls" }), "over TLS")
        .await;
    let mut sql = env.sql().await;
    #[allow(clippy::disallowed_methods)] // the assertion reads the server's own view
    let ssl: bool = sqlx::query_scalar(
        "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
         WHERE datname = current_database() AND pid <> pg_backend_pid() LIMIT 1",
    )
    .fetch_one(&mut sql)
    .await
    .expect("pg_stat_ssl");
    assert!(ssl, "the daemon's connections use TLS ({raised})");
}
