//! `readbackd`: the daemon and its operator commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use readback::auth::{TokenRequest, mint};
use readback::clock::Timestamp;
use readback::severity::Severity;
use readback::store::reports::GroupBy;
use readback::{Application, Config, store::Store};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "readbackd",
    version,
    about = "Closed-loop delivery of critical radiology findings"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML configuration file (keys can be overridden by READBACK_<SECTION>__<KEY>).
    #[arg(long, env = "READBACK_CONFIG", default_value = "config/readback.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (applies pending migrations first).
    Serve(ConfigArg),
    /// Apply pending database migrations and exit.
    Migrate(ConfigArg),
    /// Validate the configuration and exit 0 (valid) or 1 (every problem listed).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also connect to the database (and say so if it cannot be reached).
        #[arg(long)]
        connect: bool,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Time-to-acknowledge report (the same figures as GET /api/v1/reports/acknowledgements).
    Report {
        #[command(flatten)]
        config: ConfigArg,
        /// Start (RFC 3339, inclusive); default 30 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// End (RFC 3339, exclusive); default now.
        #[arg(long)]
        to: Option<String>,
        /// critical, urgent or actionable.
        #[arg(long)]
        severity: Option<String>,
        /// user, role or severity.
        #[arg(long, default_value = "severity")]
        group_by: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Mint a token signed with the configured key, for trials and tests.
    Token {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        user: String,
        /// Repeat for several roles.
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// The `kid` header, naming the published key (with auth.jwks_url).
        #[arg(long)]
        kid: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and check each finding against its content
    /// digest; with --checkpoint, also prove the log still extends each
    /// signed checkpoint. Exit 1 naming the first problem found.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// A file written by `audit checkpoint` (repeat for several).
        #[arg(long = "checkpoint", value_name = "FILE")]
        checkpoints: Vec<PathBuf>,
        /// Check signatures with this public key (`KEY.pub` from `audit
        /// keygen`) instead of audit.checkpoint_key_file: for a reviewer
        /// who does not hold the private key.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// Verify the log, then write a statement of its last row and hash,
    /// signed with audit.checkpoint_key_file, to keep off the host.
    Checkpoint {
        #[command(flatten)]
        config: ConfigArg,
        /// Write the checkpoint here instead of to stdout.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Create a checkpoint signing key: FILE (private, mode 0600) and
    /// FILE.pub (public, for reviewers). Never overwrites.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&arg.config).map_err(|e| {
        eprintln!("readbackd: {}: {e}", arg.config.display());
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    // One TLS implementation for HTTPS, PostgreSQL and SMTP: rustls on ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.command {
        Command::CheckConfig {
            config: arg,
            connect,
        } => {
            let config = load(&arg)?;
            if connect {
                runtime().block_on(async {
                    let store = Store::connect(&config.database).await.map_err(fail)?;
                    let reached = store.ping().await;
                    store.close().await;
                    reached.map_err(|e| {
                        eprintln!("readbackd: {}: database.url: {e}", arg.config.display());
                        ExitCode::from(1)
                    })?;
                    fetch_jwks(&config).await.map_err(|e| {
                        eprintln!("readbackd: {}: auth.jwks_url: {e}", arg.config.display());
                        ExitCode::from(1)
                    })
                })?;
            }
            println!("{}: configuration is valid", arg.config.display());
            Ok(())
        }
        Command::Token {
            config,
            user,
            roles,
            session,
            email,
            name,
            ttl,
            kid,
        } => {
            let config = load(&config)?;
            let token = mint(
                &config.auth,
                &TokenRequest {
                    user_id: user,
                    roles,
                    session_id: session,
                    email,
                    name,
                    ttl,
                    key_id: kid,
                },
            )
            .map_err(|e| {
                eprintln!("readbackd: {e}");
                ExitCode::from(1)
            })?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate(arg) => {
            let config = load(&arg)?;
            let _logs = readback::telemetry::init(&config.logging).map_err(fail)?;
            runtime().block_on(async {
                let store = Store::connect(&config.database).await.map_err(fail)?;
                store.migrate().await.map_err(fail)?;
                store.close().await;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::Audit { command } => audit(command),
        Command::Report {
            config,
            from,
            to,
            severity,
            group_by,
            json,
        } => {
            let config = load(&config)?;
            let bad = |what: &str| {
                eprintln!("readbackd: {what}");
                ExitCode::from(2)
            };
            let time = |text: &Option<String>, name: &str| -> Result<Option<Timestamp>, ExitCode> {
                text.as_deref()
                    .map(|t| {
                        Timestamp::parse_rfc3339(t)
                            .ok_or_else(|| bad(&format!("--{name}: not an RFC 3339 time")))
                    })
                    .transpose()
            };
            let to = time(&to, "to")?.unwrap_or_else(Timestamp::now);
            let from = time(&from, "from")?
                .unwrap_or_else(|| Timestamp::from_millis(to.as_millis() - 30 * 86_400_000));
            let severity = severity
                .as_deref()
                .map(|s| {
                    s.parse::<Severity>()
                        .map_err(|()| bad("--severity: critical, urgent or actionable"))
                })
                .transpose()?;
            let group_by = GroupBy::parse(&group_by)
                .ok_or_else(|| bad("--group-by: user, role or severity"))?;
            runtime().block_on(async {
                let store = Store::connect(&config.database).await.map_err(fail)?;
                store.migrate().await.map_err(fail)?;
                let report = readback::audit::review::report(&store, from, to, severity, group_by)
                    .await
                    .map_err(fail)?;
                store.close().await;
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_table());
                }
                Ok(())
            })
        }
        Command::Serve(arg) => {
            let config = load(&arg)?;
            // Flushes the log files when serving ends.
            let logging = readback::telemetry::init(&config.logging).map_err(fail)?;
            runtime().block_on(serve(config, arg.config, &logging))
        }
    }
}

/// `readbackd audit …`. Verifying and checkpointing only read the
/// database (no migrations), so they also run against a read-only replica
/// or a restored copy.
fn audit(command: AuditCommand) -> Result<(), ExitCode> {
    use readback::audit::checkpoint::{self, CheckpointError, PublicKey, SigningKey};
    use readback::audit::review::{self, Vouched};
    let usage = |message: String| {
        eprintln!("readbackd: {message}");
        ExitCode::from(2)
    };
    let key_error = |error: CheckpointError| match error {
        CheckpointError::Unusable { .. } => usage(error.to_string()),
        CheckpointError::Rejected { .. } => {
            eprintln!("readbackd: checkpoint refused: {error}");
            ExitCode::from(1)
        }
    };
    let signing_key = |config: &Config| match &config.audit.checkpoint_key_file {
        Some(path) => SigningKey::read(path).map_err(key_error),
        None => Err(usage(
            "audit.checkpoint_key_file is not set (create a key with `readbackd audit keygen`)"
                .into(),
        )),
    };
    match command {
        AuditCommand::Keygen { out } => {
            let public = checkpoint::generate(&out).map_err(key_error)?;
            println!(
                "wrote {} (private: keep it from the daemon's user and off backups of the database) \
                 and {} (public: give it to reviewers); key id {}",
                out.display(),
                checkpoint::public_path(&out).display(),
                public.id()
            );
            Ok(())
        }
        AuditCommand::Checkpoint { config: arg, out } => {
            let config = load(&arg)?;
            let key = signing_key(&config)?;
            let verified = runtime().block_on(async {
                let store = Store::connect(&config.database).await.map_err(fail)?;
                let verified = review::verify(&store, &[]).await;
                store.close().await;
                // Never sign a head the log does not support.
                verified.map_err(|e| fail(format!("no checkpoint written: {e}")))
            })?;
            let statement = key.sign(verified.head_seq, &verified.head_hash, Timestamp::now());
            match out {
                Some(path) => {
                    std::fs::write(&path, statement.to_json())
                        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                    println!(
                        "checkpoint of row {} (hash {}) signed with key {} written to {}",
                        statement.seq,
                        statement.hash,
                        statement.key_id,
                        path.display()
                    );
                }
                None => print!("{}", statement.to_json()),
            }
            Ok(())
        }
        AuditCommand::Verify {
            config: arg,
            checkpoints,
            public_key,
        } => {
            let config = load(&arg)?;
            let mut vouched = Vec::with_capacity(checkpoints.len());
            if !checkpoints.is_empty() {
                let key = match &public_key {
                    Some(path) => PublicKey::read(path).map_err(key_error)?,
                    None if config.audit.checkpoint_key_file.is_some() => {
                        signing_key(&config)?.public_key()
                    }
                    None => {
                        return Err(usage(
                            "--checkpoint needs --public-key FILE or audit.checkpoint_key_file"
                                .into(),
                        ));
                    }
                };
                for path in &checkpoints {
                    vouched.push(Vouched {
                        source: path.display().to_string(),
                        checkpoint: checkpoint::Checkpoint::read_verified(path, &key)
                            .map_err(key_error)?,
                    });
                }
            }
            runtime().block_on(async {
                let store = Store::connect(&config.database).await.map_err(fail)?;
                let verified = review::verify(&store, &vouched).await;
                store.close().await;
                let v = verified.map_err(fail)?;
                let mut summary = format!(
                    "audit log verified: {} rows, chain intact; {} match their content digests",
                    v.rows,
                    plural(v.findings, "finding", "findings"),
                );
                if v.undigested > 0 {
                    summary.push_str(&format!(
                        "; {} predate content digests (not compared)",
                        plural(
                            v.undigested,
                            "notification.raised row",
                            "notification.raised rows"
                        )
                    ));
                }
                if v.checkpoints > 0 {
                    summary.push_str(&format!(
                        "; extends {}",
                        plural(v.checkpoints as u64, "checkpoint", "checkpoints")
                    ));
                }
                println!("{summary} ({:.2}s)", v.took.as_secs_f64());
                Ok(())
            })
        }
    }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// `check-config --connect`: the JWKS, when configured, is fetched and
/// holds a usable key.
async fn fetch_jwks(config: &Config) -> Result<(), String> {
    let verifier = readback::auth::Verifier::from_config(&config.auth)?;
    let Some(keys) = verifier.jwks() else {
        return Ok(());
    };
    let metrics = std::sync::Arc::new(readback::metrics::Metrics::default());
    let fetcher = readback::jwks::Fetcher::new(&config.auth, keys, metrics)?;
    let installed = fetcher.refresh().await.map_err(|e| e.to_string())?;
    println!("auth.jwks_url: usable keys {}", installed.kids.join(", "));
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("building the tokio runtime")
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("readbackd: {error}");
    tracing::error!(%error, "fatal");
    ExitCode::from(1)
}

async fn serve(
    config: Config,
    config_path: PathBuf,
    logging: &readback::telemetry::Logging,
) -> Result<(), ExitCode> {
    for key in config.plaintext_links() {
        tracing::warn!(
            link = key,
            "PLAINTEXT: {key} carries findings and credentials unencrypted over the network \
             (allow_plaintext = true); use TLS"
        );
    }
    let app = Application::build(config).await.map_err(fail)?;
    let shutdown = CancellationToken::new();
    // Both handlers are in place before READY=1: `systemctl reload` or
    // `stop` right after start meets readback's handling, not the default.
    let tasks = app.tasks();
    readback::shutdown::cancel_on_signal(&tasks, shutdown.clone()).map_err(fail)?;
    readback::shutdown::reload_on_sighup(
        &tasks,
        readback::shutdown::Reload {
            config_path,
            log_level: logging.level.clone(),
            tls: app.tls(),
        },
        shutdown.clone(),
    )
    .map_err(fail)?;
    let addr = app.local_addr();
    let scheme = if app.state().config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // The ready line: scripts and tests wait for it to learn the port.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "readbackd listening on {scheme}://{addr}");
    let _ = stdout.flush();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(%addr, "listening");
    let result = app.run_until_stopped(shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    result.map_err(fail)?;
    tracing::info!("stopped");
    Ok(())
}
