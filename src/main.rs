//! `readbackd`: the daemon and its operator commands.
//!
//! Owns: the command line (clap), which command opens the database how
//! (only `serve` and `migrate` migrate; the commands that read check the
//! schema and refuse instead), and the exit codes ([`Exit`]).
//! Never: hold logic a test cannot reach through the binary — each
//! command is a thin call into the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use readback::app::StartError;
use readback::auth::{TokenRequest, mint};
use readback::clock::Timestamp;
use readback::severity::Severity;
use readback::store::StoreError;
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
    #[arg(
        long,
        env = "READBACK_CONFIG",
        default_value = "/etc/readback/readback.toml",
        value_hint = clap::ValueHint::FilePath
    )]
    config: PathBuf,
}

/// How `readbackd` ends: sysexits(3) codes, so that systemd and scripts
/// tell "fix the setup" from "retry later" from "investigate the audit
/// log" (docs/operations.md, "Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Anything else that failed.
    Failure = 1,
    /// A bad argument, or a file named on the command line that cannot be
    /// used (clap's own code for usage errors).
    Usage = 2,
    /// EX_DATAERR: the audit log is not what was written (a changed,
    /// deleted or reordered row, an edited finding, a checkpoint the log no
    /// longer extends or whose signature fails).
    Tampered = 65,
    /// EX_UNAVAILABLE: the database cannot be reached; retrying later may
    /// succeed.
    Unavailable = 69,
    /// EX_CONFIG: the configuration is invalid, or the database's schema is
    /// not the one this readbackd reads; restarting will not help.
    Config = 78,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (applies pending migrations first).
    Serve(ConfigArg),
    /// Apply pending database migrations and exit.
    Migrate(ConfigArg),
    /// Validate the configuration and exit 0 (valid) or 78 (every problem listed).
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
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Escalation email tools.
    Email {
        #[command(subcommand)]
        command: EmailCommand,
    },
    /// The escalation email outbox: what waits, what failed, retrying it.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Every audit row of one notification, in order, with its state.
    Timeline {
        #[command(flatten)]
        config: ConfigArg,
        /// The notification's id, or readback's reference (RB-42, from an
        /// escalation email).
        id: String,
        /// Print JSON (the same as GET /api/v1/notifications/{id}/timeline).
        #[arg(long)]
        json: bool,
    },
    /// Write the man pages or a shell's completions into DIR (for packaging).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generated,
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
enum ConfigCommand {
    /// Print the configuration in force (the file, READBACK_* overrides,
    /// secret files and defaults), secrets and URL passwords redacted.
    Show(ConfigArg),
}

#[derive(Subcommand)]
enum EmailCommand {
    /// Send a test email now through smtp.url (not through the outbox);
    /// exit 0 when the server accepted it.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// The address to send it to.
        #[arg(long, value_name = "ADDR")]
        to: String,
    },
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// List outbox rows, oldest first: by default the ones not yet sent
    /// (pending, sending, failed).
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// pending, sending, sent, failed, skipped or all (repeat for several).
        #[arg(long = "state", value_name = "STATE")]
        states: Vec<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make failed (or waiting) emails due now, with a fresh count of
    /// attempts; the running daemon sends them at its next tick. Audited
    /// as `email.retried`.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// Outbox rows (the SEQ column of `outbox list`).
        #[arg(value_name = "SEQ", required_unless_present = "failed")]
        seqs: Vec<i64>,
        /// Every failed row.
        #[arg(long, conflicts_with = "seqs")]
        failed: bool,
    },
}

#[derive(Subcommand)]
enum Generated {
    /// readbackd.1 and one page per command (readbackd-serve.1, ...).
    Man { dir: PathBuf },
    /// The completion script of SHELL, named as that shell looks for it.
    Completions {
        shell: clap_complete::Shell,
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and check each finding against its content
    /// digest; with --checkpoint, also prove the log still extends each
    /// signed checkpoint. Exit 65 naming the first problem found.
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
    Config::load(&arg.config)
        .map_err(|e| die(Exit::Config, format!("{}: {e}", arg.config.display())))
}

/// Opens the database for an operator command: it must exist and hold
/// exactly this readbackd's schema; nothing is created or migrated (only
/// `serve` and `migrate` migrate).
async fn open_existing(config: &Config) -> Result<Store, ExitCode> {
    let store = Store::connect_existing(&config.database)
        .await
        .map_err(store_failure)?;
    if let Err(e) = store.check_schema().await {
        store.close().await;
        return Err(store_failure(e));
    }
    Ok(store)
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
                    let store = Store::connect(&config.database)
                        .await
                        .map_err(store_failure)?;
                    let reached = store.ping().await;
                    store.close().await;
                    reached.map_err(|e| {
                        let exit = if e.is_unavailable() {
                            Exit::Unavailable
                        } else {
                            Exit::Failure
                        };
                        die(exit, format!("{}: database.url: {e}", arg.config.display()))
                    })?;
                    fetch_jwks(&config).await.map_err(|e| {
                        die(
                            Exit::Unavailable,
                            format!("{}: auth.jwks_url: {e}", arg.config.display()),
                        )
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
            .map_err(|e| die(Exit::Config, e))?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate(arg) => {
            let config = load(&arg)?;
            let _logs = readback::telemetry::init(&config.logging).map_err(fail)?;
            runtime().block_on(async {
                let store = Store::connect(&config.database)
                    .await
                    .map_err(store_failure)?;
                let migrated = store.migrate().await;
                store.close().await;
                migrated.map_err(store_failure)?;
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
            let bad = |what: &str| die(Exit::Usage, what);
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
                let store = open_existing(&config).await?;
                let report =
                    readback::audit::review::report(&store, from, to, severity, group_by).await;
                store.close().await;
                let report = report.map_err(store_failure)?;
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_table());
                }
                Ok(())
            })
        }
        Command::Generate { what } => generate(what),
        Command::Config {
            command: ConfigCommand::Show(arg),
        } => {
            let config = load(&arg)?;
            println!(
                "# {} with READBACK_* overrides and defaults; secrets redacted",
                arg.config.display()
            );
            println!("{}", redact_urls(&format!("{config:#?}")));
            Ok(())
        }
        Command::Email {
            command: EmailCommand::Test { config, to },
        } => {
            let config = load(&config)?;
            runtime().block_on(email_test(&config, &to))
        }
        Command::Outbox { command } => outbox(command),
        Command::Timeline { config, id, json } => {
            let config = load(&config)?;
            runtime().block_on(timeline(&config, &id, json))
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
    use readback::audit::review::{self, VerifyError, Vouched};
    let usage = |message: String| die(Exit::Usage, message);
    let key_error = |error: CheckpointError| match error {
        CheckpointError::Unusable { .. } => usage(error.to_string()),
        CheckpointError::Rejected { .. } => {
            die(Exit::Tampered, format!("checkpoint refused: {error}"))
        }
    };
    let verify_error = |error: VerifyError| match error {
        VerifyError::Tamper(_) => die(Exit::Tampered, error),
        VerifyError::Store(e) => store_failure(e),
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
                let store = open_existing(&config).await?;
                let verified = review::verify(&store, &[]).await;
                store.close().await;
                // Never sign a head the log does not support.
                verified.map_err(|e| {
                    eprintln!("readbackd: no checkpoint written");
                    verify_error(e)
                })
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
                let store = open_existing(&config).await?;
                let verified = review::verify(&store, &vouched).await;
                store.close().await;
                let v = verified.map_err(verify_error)?;
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

/// `readbackd email test`: one message through the configured relay.
async fn email_test(config: &Config, to: &str) -> Result<(), ExitCode> {
    use readback::escalation::mailer::Mailer;
    let mut mailer = match Mailer::from_config(&config.smtp) {
        Ok(Some(mailer)) => mailer,
        Ok(None) => {
            return Err(die(
                Exit::Config,
                "smtp.url and smtp.from are not both set: escalation emails wait in the outbox",
            ));
        }
        Err(e) => return Err(die(Exit::Config, e)),
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let body = format!(
        "This is a test message from readbackd on {}, sent with `readbackd email test`.\n\
         Escalation emails for unacknowledged critical findings use this relay and sender.\n",
        host.trim()
    );
    match mailer.send_test(to, "[readback] Test message", body).await {
        Ok(()) => {
            println!("test email to {to} accepted by the SMTP server");
            Ok(())
        }
        Err((error, transient)) => {
            let exit = if transient {
                Exit::Unavailable
            } else {
                Exit::Failure
            };
            Err(die(
                exit,
                format!("test email to {to} not accepted: {error}"),
            ))
        }
    }
}

/// `readbackd outbox …`.
fn outbox(command: OutboxCommand) -> Result<(), ExitCode> {
    use readback::store::escalation::{self as sql, OutboxRow};
    const STATES: [&str; 5] = ["pending", "sending", "sent", "failed", "skipped"];
    let table = |rows: &[OutboxRow]| {
        println!(
            "{:>6}  {:<10}  {:<8}  {:>5}  {:>8}  {:<24}  {:<32}  LAST ERROR",
            "SEQ", "REFERENCE", "STATE", "LEVEL", "ATTEMPTS", "NEXT ATTEMPT", "ADDRESS"
        );
        for row in rows {
            println!(
                "{:>6}  {:<10}  {:<8}  {:>5}  {:>8}  {:<24}  {:<32}  {}",
                row.seq,
                row.reference.as_deref().unwrap_or("-"),
                row.state,
                row.level,
                row.attempts,
                row.next_attempt_at.to_string(),
                row.address,
                row.last_error.as_deref().unwrap_or("")
            );
        }
    };
    match command {
        OutboxCommand::List {
            config,
            states,
            limit,
            json,
        } => {
            let config = load(&config)?;
            let states: Vec<&str> = if states.is_empty() {
                vec!["pending", "sending", "failed"]
            } else if states.iter().any(|s| s == "all") {
                Vec::new()
            } else {
                states
                    .iter()
                    .map(|s| {
                        STATES
                            .iter()
                            .copied()
                            .find(|known| known == s)
                            .ok_or_else(|| {
                                die(
                                    Exit::Usage,
                                    format!("--state {s}: one of {}, all", STATES.join(", ")),
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?
            };
            let rows = runtime().block_on(async {
                let store = open_existing(&config).await?;
                let rows = match store.conn().await {
                    Ok(mut conn) => sql::outbox_rows(&mut conn, &states, limit).await,
                    Err(e) => Err(e),
                };
                store.close().await;
                rows.map_err(store_failure)
            })?;
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row).expect("serializable"));
                }
            } else {
                table(&rows);
            }
            Ok(())
        }
        OutboxCommand::Retry {
            config,
            seqs,
            failed: _,
        } => {
            let config = load(&config)?;
            let operator = operator();
            let rows = runtime().block_on(async {
                let store = open_existing(&config).await?;
                let retried = retry(&store, &seqs, &operator).await;
                store.close().await;
                retried.map_err(store_failure)
            })?;
            if rows.is_empty() {
                return Err(die(
                    Exit::Failure,
                    "no failed or pending email matched: nothing retried (see `readbackd outbox list`)",
                ));
            }
            table(&rows);
            println!(
                "{} due now: the running daemon sends {} at its next tick",
                plural(rows.len() as u64, "email", "emails"),
                if rows.len() == 1 { "it" } else { "them" }
            );
            Ok(())
        }
    }
}

/// Makes the rows due and audits each, in one transaction.
async fn retry(
    store: &Store,
    seqs: &[i64],
    operator: &str,
) -> Result<Vec<readback::store::escalation::OutboxRow>, StoreError> {
    use readback::audit::{Action, AuditEvent};
    let now = Timestamp::now();
    let mut tx = store.begin().await?;
    let rows = readback::store::escalation::retry_emails(&mut tx, seqs, now).await?;
    let events: Vec<AuditEvent> = rows
        .iter()
        .map(|row| {
            let mut event = AuditEvent::new(Action::EmailRetried, now)
                .outcome("ok")
                .detail(serde_json::json!({
                    "outboxSeq": row.seq,
                    "level": row.level,
                    "address": row.address,
                    "lastError": row.last_error,
                }));
            event.actor_id = Some(operator.to_string());
            event.actor_role = Some("operator".into());
            event.notification_id = Some(row.notification_id.clone());
            event
        })
        .collect();
    readback::store::audit::append_all(&mut tx, events).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Who runs this command, for the audit log: the user behind `sudo`, or
/// the login name.
fn operator() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// `readbackd timeline ID`: the notification's state and its audit rows.
async fn timeline(config: &Config, id: &str, json: bool) -> Result<(), ExitCode> {
    use readback::audit::review::row_json;
    use readback::notifications::Reference;
    use readback::store::audit::{AuditFilter, WALK_PAGE, page};
    use readback::store::notifications as sql;
    let store = open_existing(config).await?;
    let found = async {
        let mut conn = store.conn().await?;
        let notification = match sql::find(&mut conn, id).await? {
            Some(n) => Some(n),
            None => match Reference::parse(id) {
                Some(reference) => sql::find_by_seq(&mut conn, reference.0).await?,
                None => None,
            },
        };
        let Some(notification) = notification else {
            return Ok(None);
        };
        let filter = AuditFilter {
            notification_id: Some(notification.id.clone()),
            ..AuditFilter::default()
        };
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let batch = page(&mut conn, &filter, after, WALK_PAGE).await?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            let full = batch.len() == WALK_PAGE as usize;
            rows.extend(batch);
            if !full {
                break;
            }
        }
        Ok::<_, StoreError>(Some((notification, rows)))
    }
    .await;
    store.close().await;
    let Some((notification, rows)) = found.map_err(store_failure)? else {
        return Err(die(Exit::Failure, format!("notification {id} not found")));
    };
    if json {
        let events: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
        println!(
            "{}",
            serde_json::json!({
                "notificationId": notification.id,
                "reference": notification.reference(),
                "state": notification.state,
                "events": events,
            })
        );
        return Ok(());
    }
    println!(
        "{} ({}): {} {}, {}, deadline {}",
        notification.id,
        notification.reference(),
        notification.severity,
        serde_json::to_value(notification.state)
            .expect("serializable")
            .as_str()
            .unwrap_or("?"),
        notification.title,
        notification.ack_deadline
    );
    for row in &rows {
        let actor = match (&row.actor_id, &row.actor_role) {
            (Some(id), Some(role)) => format!("{id} ({role})"),
            (Some(id), None) => id.clone(),
            _ => "-".into(),
        };
        println!(
            "{:>6}  {}  {:<26}  {:<8}  {:<24}  {}",
            row.seq, row.at, row.action, row.outcome, actor, row.detail
        );
    }
    Ok(())
}

/// Masks the password of every `scheme://user:password@host` and every
/// `password=` query parameter in `text`.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c == '"' || c == '?' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let colon = authority[..at].find(':').expect("checked");
                out.push_str(&authority[..=colon]);
                out.push_str("REDACTED");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.find("password=") {
        let (before, after) = rest.split_at(at + "password=".len());
        redacted.push_str(before);
        redacted.push_str("REDACTED");
        let end = after
            .find(|c: char| c == '&' || c == '"' || c.is_whitespace())
            .unwrap_or(after.len());
        rest = &after[end..];
    }
    redacted.push_str(rest);
    redacted
}

/// `readbackd generate …`: what the package installs, from the same
/// definitions as the command line itself.
fn generate(what: Generated) -> Result<(), ExitCode> {
    let written = match what {
        Generated::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .map(|()| dir),
        Generated::Completions { shell, dir } => std::fs::create_dir_all(&dir).and_then(|()| {
            clap_complete::generate_to(shell, &mut Cli::command(), "readbackd", &dir)
        }),
    };
    let path = written.map_err(|e| die(Exit::Failure, e))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// Prints `readbackd: <error>` (and logs it, when logging is set up);
/// the code to exit with.
fn die(exit: Exit, error: impl std::fmt::Display) -> ExitCode {
    eprintln!("readbackd: {error}");
    tracing::error!(%error, "fatal");
    exit.into()
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    die(Exit::Failure, error)
}

/// A database failure, by whether waiting could help.
fn store_failure(error: StoreError) -> ExitCode {
    match &error {
        StoreError::Unavailable(_) => die(Exit::Unavailable, error),
        e if e.is_unavailable() => die(Exit::Unavailable, format!("database unavailable: {e}")),
        StoreError::Open(_) | StoreError::Schema(_) => die(Exit::Config, error),
        _ => die(Exit::Failure, error),
    }
}

/// Why the daemon could not start, by what would fix it.
fn start_failure(error: StartError) -> ExitCode {
    match error {
        StartError::Store(e) => store_failure(e),
        StartError::Auth(_) | StartError::Smtp(_) | StartError::Tls(_) => die(Exit::Config, error),
        StartError::Cluster(_) => die(Exit::Unavailable, error),
        StartError::Bind { .. } => die(Exit::Failure, error),
    }
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
    let app = Application::build(config).await.map_err(start_failure)?;
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

#[cfg(test)]
mod tests {
    use super::redact_urls;

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_urls(
                r#"url: "postgres://rb:s3cr%40t@db.example:5432/rb?sslmode=require&password=x", b: "redis://:pw@cache/0", c: "smtp://relay.example:25""#
            ),
            r#"url: "postgres://rb:REDACTED@db.example:5432/rb?sslmode=require&password=REDACTED", b: "redis://:REDACTED@cache/0", c: "smtp://relay.example:25""#
        );
        assert_eq!(
            redact_urls("sqlite:///var/lib/readback/readback.db"),
            "sqlite:///var/lib/readback/readback.db"
        );
    }
}
