//! `readbackd`: the daemon and its operator commands.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use readback::auth::{TokenRequest, mint};
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
    CheckConfig(ConfigArg),
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
    },
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&arg.config).map_err(|e| {
        eprintln!("readbackd: {}: {e}", arg.config.display());
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

fn run(cli: Cli) -> Result<(), ExitCode> {
    match cli.command {
        Command::CheckConfig(arg) => {
            load(&arg)?;
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
            readback::telemetry::init(&config.logging);
            runtime().block_on(async {
                let store = Store::connect(&config.database).await.map_err(fail)?;
                store.migrate().await.map_err(fail)?;
                store.close().await;
                println!("migrations applied");
                Ok(())
            })
        }
        Command::Serve(arg) => {
            let config = load(&arg)?;
            readback::telemetry::init(&config.logging);
            runtime().block_on(serve(config))
        }
    }
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

async fn serve(config: Config) -> Result<(), ExitCode> {
    let app = Application::build(config).await.map_err(fail)?;
    let shutdown = CancellationToken::new();
    readback::shutdown::cancel_on_signal(shutdown.clone());
    let addr = app.local_addr();
    // The ready line: scripts and tests wait for it to learn the port.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "readbackd listening on http://{addr}");
    let _ = stdout.flush();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(%addr, "listening");
    let result = app.run_until_stopped(shutdown).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    result.map_err(fail)?;
    tracing::info!("stopped");
    Ok(())
}
