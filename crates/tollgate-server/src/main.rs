//! `tollgate`: the command line.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tollgate_core::LeakOutcome;
use tollgate_domain::{Actor, Clock, RequestContext, SystemClock, TeamId};
use tollgate_server::{Config, telemetry};

/// mimalloc: a request allocates and frees many small buffers (headers, JSON, bodies) across
/// the runtime's threads. In `scripts/bench-gateway`'s profile at 64 connections glibc's
/// malloc and free took about a tenth of the request threads' CPU; mimalloc takes about 3%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// API keys: block one that leaked.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// The audit log: verify its hash chains, apply retention, export.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The mail outbox: what was sent, what waits (all of it, without mail.smtp_url).
    #[command(subcommand)]
    Mail(MailCommand),
    /// Credits: grant, adjust, show a balance, verify the ledger.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// Inference requests' kept bodies: read one for an abuse review (audited).
    #[command(subcommand)]
    Requests(RequestsCommand),
    /// Teams: how their data may be used.
    #[command(subcommand)]
    Team(TeamCommand),
}

#[derive(Debug, Subcommand)]
enum TeamCommand {
    /// Grant a team zero retention (no request bodies kept, the Responses API stores nothing),
    /// or withdraw it. Audited; every node applies it within a second.
    ZeroRetention {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// Grant it.
        #[arg(long, conflicts_with = "withdraw", required_unless_present = "withdraw")]
        grant: bool,
        /// Withdraw it.
        #[arg(long)]
        withdraw: bool,
    },
}

#[derive(Debug, Subcommand)]
enum RequestsCommand {
    /// Print a request's kept bodies (request and answer) as JSON, recording in its team's
    /// audit log that the operator read them and why.
    Show {
        /// The request's id (its usage record's, `x-request-id`).
        #[arg(long)]
        id: tollgate_domain::RequestId,
        /// Why (an abuse review's reference): recorded in the audit log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum BillingCommand {
    /// Grant credit to a team (audited; each call is a new entry): prepaid, or with `--promo`
    /// promotional credit that expires at `--expires`.
    Grant {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// USD, an exact decimal with at most 10 places (e.g. 12.50).
        #[arg(long)]
        usd: String,
        /// Why, for the team's audit log.
        #[arg(long)]
        reason: String,
        /// Promotional credit (consumed first; expires).
        #[arg(long, requires = "expires")]
        promo: bool,
        /// When promotional credit expires (RFC 3339).
        #[arg(long, requires = "promo")]
        expires: Option<String>,
    },
    /// Adjust a team's prepaid credit by an amount of either sign (audited).
    Adjust {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// USD, an exact decimal of either sign (e.g. -5 or 2.25).
        #[arg(long, allow_hyphen_values = true)]
        usd: String,
        /// Why, for the team's audit log.
        #[arg(long)]
        reason: String,
    },
    /// Set the most a team's Admins may set as its monthly invoiced spending limit (xAI's
    /// `hardSlOverride`), or with `--default` return it to `billing.max_invoiced_limit_usd`.
    Limit {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// USD, an exact decimal (0: prepaid credit only).
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        max_usd: Option<String>,
        /// Back to the configured default.
        #[arg(long)]
        default: bool,
    },
    /// A team's rate-limit tier (and why); with `--tier N`, pin it there, or with `--unpin` let
    /// its spend decide again. Audited.
    Tier {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// The tier to pin the team to (0 is the first).
        #[arg(long, conflicts_with = "unpin")]
        tier: Option<u32>,
        /// Let the team's spend decide its tier again.
        #[arg(long)]
        unpin: bool,
    },
    /// A team's credit, and its newest ledger entries.
    Balance {
        /// The team.
        #[arg(long)]
        team: TeamId,
    },
    /// Check every team's balances against the sums of its ledger entries (on one consistent
    /// snapshot, so a running server raises no false alarm). Exits with status 1 naming the
    /// first mismatch.
    Verify,
    /// Invoices: list a team's, issue what is due now, mark one paid.
    #[command(subcommand)]
    Invoice(InvoiceCommand),
}

#[derive(Debug, Subcommand)]
enum InvoiceCommand {
    /// A team's invoices and receipts, newest first.
    List {
        /// The team.
        #[arg(long)]
        team: TeamId,
    },
    /// Issue the invoices of months that are over and receipts that are missing, charge what is
    /// due and block teams unpaid past the grace, now (the server does it every few minutes).
    Run,
    /// Correct an issued monthly invoice with a credit note (numbered in the series): unpaid, it
    /// lowers what is charged; paid, the amount is credited to the team's prepaid balance.
    CreditNote {
        /// The invoice's number.
        #[arg(long)]
        number: String,
        /// USD, an exact decimal.
        #[arg(long)]
        usd: String,
        /// Why, for the team's audit log and the credit note.
        #[arg(long)]
        reason: String,
    },
    /// Mark an unpaid invoice paid (a bank transfer, say), with how; lifts the team's block.
    MarkPaid {
        /// The invoice's number (e.g. TG-000042).
        #[arg(long)]
        number: String,
        /// How it was paid, for the team's audit log.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum MailCommand {
    /// The newest mails: state, attempts, recipients, subject.
    List {
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// One mail in full, to deliver by hand when no SMTP server is configured.
    Show {
        /// The mail's id (from `list`).
        #[arg(long)]
        id: tollgate_domain::MailId,
    },
    /// Send every due mail now through mail.smtp_url.
    Send,
}

#[derive(Debug, Subcommand)]
enum ApiKeyCommand {
    /// Block an API key (e.g. reported leaked by a channel other than GitHub): it is refused on
    /// every node within a second, and enabling it does not lift the block. Name it by
    /// `--team` and `--id`, or pass the key's value on standard input.
    Block {
        /// The key's team (with `--id`).
        #[arg(long, requires = "id")]
        team: Option<TeamId>,
        /// The key's id (with `--team`).
        #[arg(long, requires = "team")]
        id: Option<tollgate_domain::ApiKeyId>,
        /// Why, for the audit log and the team (e.g. where it was found).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the tamper-evident hash chain of one team's audit log (or of every chain). Names the
    /// first broken link and exits with status 1 when a chain does not verify.
    Verify {
        /// Only this team's chain.
        #[arg(long)]
        team: Option<TeamId>,
    },
    /// Remove events older than `audit.retention_days` now (the server does this every
    /// `audit.prune_interval_minutes` by itself).
    Prune,
    /// Write a team's audit events to standard output, oldest first.
    Export {
        /// The team.
        #[arg(long)]
        team: TeamId,
        /// `csv` or `jsonl`.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
    },
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
    /// List a team's management keys (never their secrets).
    List {
        /// The team's id.
        #[arg(long)]
        team: TeamId,
    },
    /// Revoke a management key: refused from now on.
    Revoke {
        /// The team's id.
        #[arg(long)]
        team: TeamId,
        /// The key's id (from `list`).
        #[arg(long)]
        id: tollgate_domain::ManagementKeyId,
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
    let result = runtime.block_on(run(cli));
    telemetry::flush();
    match result {
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
    // A serving process gathers its lines (one per request) rather than writing each alone.
    let serving = matches!(
        cli.command,
        Command::Serve {
            validate_and_exit: false
        }
    );
    telemetry::init(config.log_format, &config.log_filter, serving);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    match cli.command {
        Command::Serve {
            validate_and_exit: true,
        } => {
            let providers = tollgate_server::check_sign_in_providers(&config)?;
            println!(
                "configuration is valid ({} models, {providers} sign-in providers)",
                config.models.len()
            );
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
        Command::Audit(command) => audit(&config, clock, command).await,
        Command::Billing(command) => billing(&config, clock, command).await,
        Command::Mail(command) => mail(&config, clock, command).await,
        Command::Team(TeamCommand::ZeroRetention { team, grant, .. }) => {
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let result = services
                .teams
                .set_zero_retention(team, grant, Actor::Operator, &RequestContext::default())
                .await;
            store.close().await;
            let data_use = result?;
            println!(
                "team {team}: zero retention {}, training {}",
                if data_use.zero_retention { "on" } else { "off" },
                if data_use.training_allowed {
                    "allowed"
                } else {
                    "not allowed"
                }
            );
            Ok(())
        }
        Command::Requests(RequestsCommand::Show { id, reason }) => {
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let shown = services
                .retention
                .show(id, &reason, Actor::Operator, &RequestContext::default())
                .await;
            store.close().await;
            let shown = shown?.with_context(|| {
                format!("no bodies are kept for request {id} (never kept, or past retention.bodies_days)")
            })?;
            let answer = serde_json::json!({
                "request_id": id.to_string(),
                "team_id": shown.team_id.to_string(),
                "api_key_id": shown.api_key_id.to_string(),
                "endpoint": shown.endpoint,
                "model": shown.model,
                "created_at": shown.created_at.to_rfc3339(),
                "truncated": shown.bodies.truncated,
                "request": shown.bodies.request,
                "response": shown.bodies.response,
            });
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Command::ApiKey(ApiKeyCommand::Block { team, id, reason }) => {
            let presented = match (team, id) {
                (Some(_), Some(_)) => None,
                _ => Some(read_secret("API key to block")?),
            };
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let context = RequestContext::default();
            let result = match (team, id, presented) {
                (Some(team), Some(id), _) => services
                    .keys
                    .block_api_key(team, id, &reason, Actor::Operator, &context)
                    .await
                    .map(Some),
                (_, _, Some(value)) => {
                    services
                        .keys
                        .block_api_key_by_secret(&value, &reason, Actor::Operator, &context)
                        .await
                }
                _ => Ok(None),
            };
            store.close().await;
            match result.context("cannot block the key")? {
                Some(LeakOutcome::Blocked(key)) => {
                    println!("blocked API key {} ({}) of team {}", key.id, key.redacted, key.team_id);
                }
                Some(LeakOutcome::AlreadyBlocked(key)) => {
                    println!("API key {} ({}) was already blocked", key.id, key.redacted);
                }
                Some(LeakOutcome::GraceEnded(key)) => println!(
                    "that was the previous secret of API key {} ({}), still in its rotation grace: the grace ended, \
                     the current secret works on",
                    key.id, key.redacted
                ),
                Some(LeakOutcome::AlreadyDead(key)) => println!(
                    "that secret of API key {} ({}) opens nothing any more (rotated out, or the key or its team \
                     deleted): nothing to block; the report is on the team's record",
                    key.id, key.redacted
                ),
                None => anyhow::bail!("that is not an API key of this Tollgate"),
            }
            Ok(())
        }
        Command::ManagementKey(ManagementKeyCommand::List { team }) => {
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let result = services
                .keys
                .list_management_keys(team, Actor::Operator, &RequestContext::default())
                .await;
            store.close().await;
            for key in result.context("cannot list the management keys")? {
                let state = key
                    .revoked_at
                    .map_or_else(|| "active".to_owned(), |at| format!("revoked {}", at.to_rfc3339()));
                println!("{}  {}  {:<24}  {state}", key.id, key.redacted, key.name);
            }
            Ok(())
        }
        Command::ManagementKey(ManagementKeyCommand::Revoke { team, id }) => {
            let store = tollgate_server::open_store(&config).await?;
            let services = tollgate_server::services(&config, &store, &clock)?;
            let result = services
                .keys
                .revoke_management_key(team, id, Actor::Operator, &RequestContext::default())
                .await;
            store.close().await;
            result.context("cannot revoke the management key")?;
            println!("revoked management key {id}");
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

async fn audit(config: &Config, clock: Arc<dyn Clock>, command: AuditCommand) -> anyhow::Result<()> {
    let store = tollgate_server::open_store(config).await?;
    let services = tollgate_server::services(config, &store, &clock)?;
    let result = match command {
        AuditCommand::Verify { team } => verify(&services.audit, team).await,
        AuditCommand::Prune => {
            let removed = services.audit.prune_expired().await?;
            println!(
                "removed {removed} audit events older than {} days",
                config.audit.retention_days
            );
            Ok(())
        }
        AuditCommand::Export { team, format, from, to } => {
            let format = tollgate_http::ExportFormat::parse(&format).map_err(anyhow::Error::msg)?;
            let filter = tollgate_core::AuditFilter {
                from,
                to,
                oldest_first: true,
                ..Default::default()
            };
            let mut export = services.audit.export_as_operator(team, filter, format.name()).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            if let Some(header) = format.header() {
                out.write_all(header.as_bytes())?;
            }
            while let Some(page) = export.next_page().await? {
                for record in &page {
                    out.write_all(format.line(record).as_bytes())?;
                }
            }
            out.flush()?;
            Ok(())
        }
    };
    store.close().await;
    result
}

async fn mail(config: &Config, clock: Arc<dyn Clock>, command: MailCommand) -> anyhow::Result<()> {
    let store = tollgate_server::open_store(config).await?;
    let result = async {
        match command {
            MailCommand::List { limit } => {
                for queued in store.list_mail(limit).await? {
                    let state = match queued.state() {
                        tollgate_domain::MailState::Queued => "queued",
                        tollgate_domain::MailState::Sent => "sent",
                        tollgate_domain::MailState::Failed => "failed",
                    };
                    let to: Vec<&str> = queued.mail.to.iter().map(AsRef::as_ref).collect();
                    println!(
                        "{}  {}  {state:<6}  attempts {}  to {}  {:?}",
                        queued.mail.id,
                        queued
                            .mail
                            .created_at
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        queued.attempts,
                        to.join(", "),
                        queued.mail.subject
                    );
                }
                Ok(())
            }
            MailCommand::Show { id } => {
                let queued = store
                    .get_mail(id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no mail {id}"))?;
                let to: Vec<&str> = queued.mail.to.iter().map(AsRef::as_ref).collect();
                println!(
                    "To: {}\nSubject: {}\n\n{}",
                    to.join(", "),
                    queued.mail.subject,
                    queued.mail.body
                );
                if let Some(error) = &queued.last_error {
                    eprintln!("last error: {error}");
                }
                Ok(())
            }
            MailCommand::Send => {
                let mailer = tollgate_server::mailer(config)?
                    .ok_or_else(|| anyhow::anyhow!("mail.smtp_url is not set: there is nowhere to send mail"))?;
                let sent = tollgate_core::MailDispatcher::new(Arc::clone(&store), clock, mailer)
                    .run_once()
                    .await?;
                println!("sent {sent} mails");
                Ok(())
            }
        }
    }
    .await;
    store.close().await;
    result
}

async fn verify(audit: &tollgate_core::AuditService, team: Option<TeamId>) -> anyhow::Result<()> {
    let reports = match team {
        Some(team) => audit.verify(Some(team)).await?.into_iter().collect(),
        None => audit.verify_all().await?,
    };
    if reports.is_empty() {
        println!("no audit events yet");
        return Ok(());
    }
    let mut broken = 0;
    for report in &reports {
        let chain = report
            .team_id
            .map_or_else(|| "platform".to_owned(), |t| format!("team {t}"));
        match &report.result {
            Ok(()) => {
                let pruned = report
                    .pruned_through
                    .map(|seq| format!(", retention removed #1..#{seq}"))
                    .unwrap_or_default();
                let unchained = if report.unchained > 0 {
                    format!(", {} older events predate the chain", report.unchained)
                } else {
                    String::new()
                };
                println!(
                    "{chain}: ok, {} events verified{pruned}{unchained}; head #{} {}",
                    report.checked,
                    report.head.seq,
                    hex_of(&report.head.hash)
                );
            }
            Err(first_break) => {
                broken += 1;
                println!("{chain}: BROKEN: {first_break}");
            }
        }
    }
    anyhow::ensure!(broken == 0, "{broken} audit chain(s) do not verify");
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_password() -> anyhow::Result<String> {
    read_secret("Password (15+ characters)")
}

/// One line from standard input (prompting on a terminal), without its line ending.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("{prompt}: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading standard input")?;
    let value = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!value.is_empty(), "nothing on standard input ({prompt})");
    Ok(value)
}

async fn billing(config: &Config, clock: Arc<dyn Clock>, command: BillingCommand) -> anyhow::Result<()> {
    use tollgate_domain::ledger::{format_usd, parse_usd};
    let store = tollgate_server::open_store(config).await?;
    let services = tollgate_server::services(config, &store, &clock)?;
    let (ledger, payments, tiers) = (services.ledger, services.payments, services.tiers);
    let context = RequestContext::default();
    let result = async {
        match command {
            BillingCommand::Grant {
                team,
                usd,
                reason,
                promo: _,
                expires,
            } => {
                let amount = parse_usd(&usd)?;
                let expires = expires
                    .map(|text| {
                        chrono::DateTime::parse_from_rfc3339(&text)
                            .map(|at| at.with_timezone(&chrono::Utc))
                            .with_context(|| format!("--expires '{text}' is not an RFC 3339 time"))
                    })
                    .transpose()?;
                let entry = ledger
                    .grant(team, amount, &reason, expires, Actor::Operator, &context)
                    .await?;
                println!(
                    "granted ${} to team {team} (entry {})",
                    format_usd(entry.amount),
                    entry.id
                );
            }
            BillingCommand::Adjust { team, usd, reason } => {
                let entry = ledger
                    .adjust(team, parse_usd(&usd)?, &reason, Actor::Operator, &context)
                    .await?;
                println!(
                    "adjusted team {team} by ${} (entry {})",
                    format_usd(entry.amount),
                    entry.id
                );
            }
            BillingCommand::Limit { team, max_usd, .. } => {
                let limit = max_usd.as_deref().map(parse_usd).transpose()?;
                let limits = ledger.set_hard_override(team, limit, Actor::Operator, &context).await?;
                println!(
                    "team {team}: maximum invoiced spending limit ${}, in force ${}",
                    format_usd(limits.effective_hard()),
                    format_usd(limits.effective())
                );
            }
            BillingCommand::Tier { team, tier, unpin } => {
                anyhow::ensure!(
                    !tiers.schedule().is_empty(),
                    "no rate-limit tiers are configured (rate_limits.tiers)"
                );
                let standing = if tier.is_some() || unpin {
                    tiers.pin(team, tier, Actor::Operator, &context).await?
                } else {
                    tiers.tier_of(team).await?
                };
                println!(
                    "team {team}: tier {} of {} ({}; highest reached {}, qualifying spend ${})",
                    standing.tier,
                    tiers.schedule().len(),
                    standing
                        .standing
                        .pinned
                        .map_or_else(|| "by spend".to_owned(), |pin| format!("pinned to {pin}")),
                    standing.standing.reached,
                    format_usd(standing.standing.qualifying_spend)
                );
            }
            BillingCommand::Balance { team } => {
                let balance = ledger.balance(team).await?;
                println!("prepaid: ${}", format_usd(balance.prepaid));
                println!("promotional: ${}", format_usd(balance.promo));
                for entry in ledger.entries(team, 20).await? {
                    println!(
                        "{}  {:<12} {:<8} {:>16}  {}",
                        entry.created_at.format("%Y-%m-%d %H:%M:%S"),
                        entry.kind,
                        entry.bucket.as_str(),
                        format_usd(entry.amount),
                        entry.reason.as_deref().unwrap_or("")
                    );
                }
            }
            BillingCommand::Verify => match ledger.verify().await? {
                None => {
                    println!("ledger verified: every balance equals the sum of its entries, every charge its usage")
                }
                Some(mismatch) => anyhow::bail!("ledger mismatch: {mismatch}"),
            },
            BillingCommand::Invoice(InvoiceCommand::List { team }) => {
                let filter = tollgate_store::InvoiceFilter {
                    limit: 1000,
                    ..tollgate_store::InvoiceFilter::default()
                };
                for invoice in store.invoices(team, &filter).await? {
                    println!(
                        "{}  {:<8} {:<7} {}  {:>14}  {}",
                        invoice.number,
                        invoice.kind.as_str(),
                        invoice.status.as_str(),
                        invoice.month,
                        format_usd(invoice.total),
                        invoice.failure.as_deref().unwrap_or("")
                    );
                }
            }
            BillingCommand::Invoice(InvoiceCommand::Run) => {
                let run = payments.run_billing().await?;
                println!(
                    "issued {} invoices and {} receipts, {} charge attempts, {} teams blocked",
                    run.invoices, run.receipts, run.charges, run.blocked
                );
            }
            BillingCommand::Invoice(InvoiceCommand::CreditNote { number, usd, reason }) => {
                let note = payments
                    .credit_note(&number, parse_usd(&usd)?, &reason, Actor::Operator)
                    .await?;
                println!(
                    "credit note {} of ${} for invoice {number} (team {})",
                    note.number,
                    format_usd(note.total),
                    note.team_id
                );
            }
            BillingCommand::Invoice(InvoiceCommand::MarkPaid { number, reason }) => {
                let invoice = payments.mark_paid(&number, &reason, Actor::Operator).await?;
                println!(
                    "invoice {} (team {}, ${}) is paid",
                    invoice.number,
                    invoice.team_id,
                    format_usd(invoice.total)
                );
            }
        }
        anyhow::Ok(())
    }
    .await;
    store.close().await;
    result
}
