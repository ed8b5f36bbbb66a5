//! `tollgate`: the command line.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate_domain::{Actor, Clock, RequestContext, SystemClock, TeamId};
use tollgate_server::{Config, telemetry};

/// Tollgate: a self-hosted developer platform for an LLM API (accounts, teams, API keys,
/// billing, audit), wire-compatible with xAI's API, in front of any OpenAI-compatible model
/// server.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Default: ./tollgate.toml when it exists. Environment
    /// variables TOLLGATE_* override it (nested keys with '__').
    #[arg(long, global = true, env = "TOLLGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate the database, then serve every surface until SIGTERM or Ctrl-C.
    Serve {
        /// Load and check the configuration, then exit without serving.
        #[arg(long)]
        validate_and_exit: bool,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage management keys (they authenticate a team's Management API).
    #[command(subcommand, name = "management-key")]
    ManagementKey(ManagementKeyCommand),
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create a user with a Personal Team they administer. Reads the password (15 to 256
    /// characters) from standard input.
    Create {
        /// Email address.
        #[arg(long)]
        email: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ManagementKeyCommand {
    /// Create a management key for a team. The key is printed once and cannot be shown again.
    Create {
        /// The team's id (e.g. the Personal Team printed by `user create`).
        #[arg(long)]
        team: TeamId,
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let explicit = cli.config.is_some();
    let path = cli.config.unwrap_or_else(|| PathBuf::from("tollgate.toml"));
    let config = Config::load(&path, explicit)?;
    telemetry::init(config.log_format, &config.log_filter);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve {
            validate_and_exit: true,
        } => {
            println!("configuration is valid ({} models)", config.models.len());
            Ok(())
        }
        Command::Serve {
            validate_and_exit: false,
        } => {
            let server = tollgate_server::start(&config, clock, tollgate_server::shutdown_signal()).await?;
            server.wait().await
        }
        Command::Migrate => {
            let store = tollgate_server::open_store(&config).await?;
            store.close().await;
            println!("database is up to date");
            Ok(())
        }
        Command::User(UserCommand::Create { email, name }) => {
            let password = read_password()?;
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let result = services
                .accounts
                .create_user(&email, &name, &password, Actor::Operator, &RequestContext::default())
                .await;
            store.close().await;
            let (user, team) = result.context("cannot create the user")?;
            println!("user_id: {}", user.id);
            println!("team_id: {}", team.id);
            Ok(())
        }
        Command::ManagementKey(ManagementKeyCommand::Create { team, name }) => {
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let result = services
                .keys
                .create_management_key(team, &name, Actor::Operator, None, &RequestContext::default())
                .await;
            store.close().await;
            let (key, plain) = result.context("cannot create the management key")?;
            eprintln!(
                "Management key {} created for team {}. It is shown once; store it now.",
                key.id, key.team_id
            );
            println!("{}", plain.expose());
            Ok(())
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password (15+ characters): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!password.is_empty(), "no password on standard input");
    Ok(password)
}
