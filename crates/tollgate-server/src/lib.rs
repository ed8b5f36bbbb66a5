//! The `tollgate` binary's library half: configuration, wiring of store, services, gateway and
//! HTTP, and the server's lifecycle (start, graceful shutdown). `main.rs` is only the command
//! line; tests and the benchmark start servers through [`start`].

pub mod config;
mod federation;
pub mod listener;
mod redis;
pub mod stripe;
pub mod telemetry;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tollgate_core::accounts::SessionSettings;
use tollgate_core::{AccountService, AuditService, KeyService, MailDispatcher, MailWaker, Notices, UsageRecorder};
use tollgate_domain::keys::KeyPrefix;
use tollgate_domain::{AuditChainKey, Clock, ModelPricing, Ticks};
use tollgate_gateway::{Catalog, ModelRoute, Upstream};
use tollgate_http::{AppServices, AppState, HttpSettings, Metrics};
use tollgate_store::Store;

pub use config::Config;

/// Checks the configured sign-in providers (names, presets, URLs) without reaching them; the
/// number configured.
pub fn check_sign_in_providers(config: &Config) -> anyhow::Result<usize> {
    Ok(federation::identity_providers(config)?.len())
}

/// Opens the configured database and applies migrations; start-up stops on any failure.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = tollgate_store::connect(&config.database_url, audit_key(config)?)
        .await
        .context("opening the database")?;
    store.migrate().await.context("migrating the database")?;
    Ok(store)
}

/// The audit chain key: `audit.key`, else the key file, which is created with a fresh key (mode
/// 0600) the first time.
pub fn audit_key(config: &Config) -> anyhow::Result<AuditChainKey> {
    if let Some(key) = &config.audit.key {
        return AuditChainKey::from_hex(key.expose_secret()).map_err(|e| anyhow::anyhow!("audit.key: {e}"));
    }
    let path = &config.audit.key_file;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return AuditChainKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("reading the audit chain key {}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let key = AuditChainKey::generate(&mut rand::rngs::OsRng);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, format!("{}\n", key.to_hex()).as_bytes())
                .with_context(|| format!("writing the audit chain key {}", path.display()))?;
            tracing::warn!(
                path = %path.display(),
                "created a new audit chain key; back it up with the database: without it the audit log cannot be verified"
            );
            Ok(key)
        }
        // Another process created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path)?;
            AuditChainKey::from_hex(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(error) => Err(error).with_context(|| format!("creating the audit chain key {}", path.display())),
    }
}

/// The services, built from the configuration.
pub struct Services {
    /// Wakes the mail sender when mail was queued.
    pub mail_waker: MailWaker,
    /// Accounts.
    pub accounts: AccountService,
    /// Keys.
    pub keys: KeyService,
    /// The audit log.
    pub audit: AuditService,
    /// Teams and members.
    pub teams: tollgate_core::TeamService,
    /// The credit ledger.
    pub ledger: tollgate_core::billing::Ledger,
    /// Purchases, invoices and the payment provider.
    pub payments: tollgate_core::billing::Payments,
    /// Rate-limit tiers per team.
    pub tiers: tollgate_core::Tiers,
    /// Request and response bodies kept for abuse review.
    pub retention: tollgate_core::Retention,
}

/// Builds the services over `store`.
pub fn services(config: &Config, store: &Arc<dyn Store>, clock: &Arc<dyn Clock>) -> anyhow::Result<Services> {
    let api_prefix = KeyPrefix::parse(&config.api_key_prefix)?;
    let management_prefix = KeyPrefix::parse(&config.management_key_prefix)?;
    let mail_waker = MailWaker::default();
    let notices = Notices::new(&config.product_name, &config.console_url, mail_waker.clone());
    // Every secret a service draws comes from here: the operating system's generator.
    let entropy: Arc<dyn tollgate_domain::Entropy> = Arc::new(tollgate_domain::OsEntropy);
    let keys = KeyService::new(
        Arc::clone(store),
        Arc::clone(clock),
        api_prefix,
        management_prefix,
        notices.clone(),
    )
    .with_entropy(Arc::clone(&entropy));
    let mut accounts = AccountService::new(
        Arc::clone(store),
        Arc::clone(clock),
        notices.clone(),
        &config.product_name,
        SessionSettings {
            idle: chrono::Duration::minutes(i64::from(config.sessions.idle_minutes)),
            absolute: chrono::Duration::hours(i64::from(config.sessions.absolute_hours)),
        },
        tollgate_domain::mfa::SecretSealer::new(&audit_key(config)?.derive(b"tollgate.totp-seed.v1")),
        locator(config)?,
    )
    .with_entropy(Arc::clone(&entropy));
    match tollgate_core::accounts::relying_party(&config.console_url, &config.product_name) {
        Ok(relying_party) => accounts = accounts.with_passkeys(relying_party),
        Err(reason) => tracing::info!(%reason, "passkeys are off"),
    }
    Ok(Services {
        mail_waker,
        accounts,
        teams: tollgate_core::TeamService::new(
            Arc::clone(store),
            Arc::clone(clock),
            notices.clone(),
            keys.clone(),
            Arc::new(DnsTxt::new(config.dns_resolver)?),
        )
        .with_entropy(entropy),
        keys,
        ledger: tollgate_core::billing::Ledger::new(Arc::clone(store), Arc::clone(clock))
            .with_default_hard_limit(config.billing.max_invoiced_limit()?),
        payments: payments(config, store, clock)?.with_notices(notices.clone()),
        tiers: tollgate_core::Tiers::new(config.rate_limits.schedule()?, Arc::clone(store), Arc::clone(clock)),
        retention: tollgate_core::Retention::new(
            Arc::clone(store),
            Arc::clone(clock),
            &audit_key(config)?.derive(b"tollgate.request-bodies.v1"),
            chrono::Duration::days(i64::from(config.retention.bodies_days)),
            Duration::from_millis(config.retention.bodies_write_ms),
        ),
        audit: AuditService::new(
            Arc::clone(store),
            Arc::clone(clock),
            audit_key(config)?,
            chrono::Duration::days(i64::from(config.audit.retention_days)),
        ),
    })
}

/// TXT lookups through hickory, at the configured DNS server or the system's.
struct DnsTxt(hickory_resolver::TokioResolver);

impl DnsTxt {
    fn new(server: Option<SocketAddr>) -> anyhow::Result<Self> {
        use hickory_resolver::config::{NameServerConfig, ResolverConfig};
        use hickory_resolver::name_server::TokioConnectionProvider;
        let provider = TokioConnectionProvider::default();
        let builder = match server {
            Some(address) => {
                let mut config = ResolverConfig::new();
                config.add_name_server(NameServerConfig::new(
                    address,
                    hickory_resolver::proto::xfer::Protocol::Udp,
                ));
                hickory_resolver::Resolver::builder_with_config(config, provider)
            }
            None => hickory_resolver::Resolver::builder(provider).context("reading the system's DNS configuration")?,
        };
        let mut options = hickory_resolver::config::ResolverOpts::default();
        // Re-checks must see a record as soon as it is published (or removed).
        options.cache_size = 0;
        options.attempts = 2;
        options.timeout = Duration::from_secs(3);
        Ok(Self(builder.with_options(options).build()))
    }
}

#[async_trait::async_trait]
impl tollgate_core::teams::TxtResolver for DnsTxt {
    async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.0.txt_lookup(format!("{name}.")).await {
            Ok(lookup) => Ok(lookup
                .iter()
                .map(|txt| {
                    txt.txt_data()
                        .iter()
                        .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
                        .collect::<String>()
                })
                .collect()),
            Err(error) if error.is_no_records_found() => Ok(Vec::new()),
            Err(error) => Err(format!("DNS lookup of {name} failed: {error}")),
        }
    }
}

/// GitHub's secret scanning signing keys, fetched over HTTPS.
struct GithubSigningKeys {
    client: reqwest::Client,
    url: String,
    token: Option<secrecy::SecretString>,
}

#[derive(serde::Deserialize)]
struct PublicKeys {
    public_keys: Vec<PublicKey>,
}

#[derive(serde::Deserialize)]
struct PublicKey {
    key_identifier: String,
    key: String,
}

#[async_trait::async_trait]
impl tollgate_core::SigningKeySource for GithubSigningKeys {
    async fn fetch(&self) -> Result<Vec<(String, String)>, String> {
        let mut request = self
            .client
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::USER_AGENT, "tollgate-secret-scanning");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("{} answered {status}", self.url));
        }
        let keys: PublicKeys = response.json().await.map_err(|e| e.to_string())?;
        Ok(keys
            .public_keys
            .into_iter()
            .map(|k| (k.key_identifier, k.key))
            .collect())
    }
}

/// The configured location database, or none.
pub fn locator(config: &Config) -> anyhow::Result<Arc<dyn tollgate_core::geo::Locator>> {
    match &config.geoip_database {
        Some(path) => Ok(Arc::new(
            tollgate_core::geo::MaxMindLocator::open(path).map_err(|e| anyhow::anyhow!("geoip_database: {e}"))?,
        )),
        None => Ok(Arc::new(tollgate_core::geo::NoLocator)),
    }
}

/// The SMTP mailer, when `mail.smtp_url` is set.
pub fn mailer(config: &Config) -> anyhow::Result<Option<Arc<dyn tollgate_core::Mailer>>> {
    config
        .mail
        .smtp_url
        .as_ref()
        .map(|url| {
            tollgate_core::SmtpMailer::new(url.expose_secret(), &config.mail.from)
                .map(|m| Arc::new(m) as Arc<dyn tollgate_core::Mailer>)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .transpose()
}

/// The model catalog. Upstreams with the same URL, key and timeouts are one upstream, with one
/// connection pool, whatever the models pointing at it.
pub fn catalog(config: &Config, clock: &Arc<dyn Clock>) -> anyhow::Result<Catalog> {
    use tollgate_gateway::pool::{Backend, HealthSettings, Pool};
    type UpstreamKey = (String, Option<String>, u64, u64);
    let mut clients: HashMap<(u64, u64), tollgate_gateway::upstream::UpstreamClient> = HashMap::new();
    let mut upstreams: HashMap<UpstreamKey, Arc<Upstream>> = HashMap::new();
    let mut upstream =
        |base_url: &str, api_key: Option<String>, connect: u64, read: u64| -> anyhow::Result<Arc<Upstream>> {
            let client = match clients.entry((connect, read)) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.get().clone(),
                std::collections::hash_map::Entry::Vacant(entry) => entry
                    .insert(
                        tollgate_gateway::upstream::UpstreamClient::new(
                            Duration::from_secs(connect),
                            Duration::from_secs(read),
                        )
                        .context("building the upstream HTTP client")?,
                    )
                    .clone(),
            };
            Ok(Arc::clone(
                upstreams
                    .entry((base_url.to_owned(), api_key.clone(), connect, read))
                    .or_insert_with(|| Arc::new(Upstream::new(base_url.to_owned(), base_url, api_key, client))),
            ))
        };
    let health = HealthSettings {
        eject_after: config.upstream_eject_after_failures,
        eject_for: chrono::Duration::seconds(i64::try_from(config.upstream_eject_seconds).unwrap_or(86_400)),
    };
    let secret = |key: &Option<secrecy::SecretString>| key.as_ref().map(|key| key.expose_secret().to_owned());
    let mut routes = Vec::new();
    let now = clock.now();
    for (name, model) in &config.models {
        let default_model = model.upstream_model.clone().unwrap_or_else(|| name.clone());
        let (connect, read) = (
            config.upstream_connect_timeout_seconds,
            config.upstream_read_timeout_seconds,
        );
        let mut backends = Vec::new();
        if let Some(base_url) = &model.base_url {
            backends.push(Backend {
                upstream: upstream(base_url, secret(&model.api_key), connect, read)?,
                model: default_model.clone(),
                weight: 1,
                max_concurrency: model.max_concurrency,
            });
        }
        for configured in &model.upstreams {
            backends.push(Backend {
                upstream: upstream(
                    &configured.base_url,
                    secret(&configured.api_key),
                    configured.connect_timeout_seconds.unwrap_or(connect),
                    configured.read_timeout_seconds.unwrap_or(read),
                )?,
                model: configured
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| default_model.clone()),
                weight: configured.weight,
                max_concurrency: configured.max_concurrency,
            });
        }
        routes.push(ModelRoute {
            name: name.clone(),
            aliases: model.aliases.clone(),
            pool: Arc::new(Pool::new(backends, health, Arc::clone(clock)).with_queue(
                tollgate_gateway::pool::QueueSettings {
                    max_waiting: model.max_queue.unwrap_or(0),
                    wait: Duration::from_secs(model.queue_timeout_seconds.unwrap_or(30)),
                },
            )),
            pricing: match (model.prompt_price, model.completion_price, model.image_price) {
                (Some(_), Some(_), _) | (None, None, Some(_)) => {
                    let prompt = model.prompt_price.unwrap_or(0);
                    Some(ModelPricing {
                        prompt: Ticks::new(prompt),
                        cached_prompt: Ticks::new(model.cached_prompt_price.unwrap_or(prompt)),
                        completion: Ticks::new(model.completion_price.unwrap_or(0)),
                        // Cents to ticks; the configuration bounds it.
                        image: Ticks::new(model.image_price.unwrap_or(0).saturating_mul(Ticks::PER_USD / 100)),
                        web_search: Ticks::new(model.web_search_price),
                        x_search: Ticks::new(model.x_search_price),
                    })
                }
                _ => {
                    tracing::warn!(model = %name, "the model has no prices: its requests are refused");
                    None
                }
            },
            max_output_tokens: model.max_output_tokens,
            created: now,
            endpoints: model
                .endpoints
                .iter()
                .filter_map(|endpoint| endpoint.parse().ok())
                .collect(),
            tokenizer: model
                .tokenizer
                .as_deref()
                .map(tollgate_gateway::tokenizer::Tokenizer::configured)
                .transpose()
                .map_err(|e| anyhow::anyhow!("models.{name}.tokenizer: {e}"))?,
            template: {
                let default = tollgate_gateway::usage::TemplateOverhead::default();
                tollgate_gateway::usage::TemplateOverhead {
                    per_message: model.template_tokens_per_message.unwrap_or(default.per_message),
                    per_request: model.template_tokens_per_request.unwrap_or(default.per_request),
                }
            },
            // Offered where the operator configured a backend, and the model does not name fewer.
            server_tools: config
                .search
                .offered()
                .into_iter()
                .filter(|tool| {
                    model
                        .server_side_tools
                        .as_ref()
                        .is_none_or(|named| named.iter().any(|name| name == tool.as_str()))
                })
                .collect(),
        });
    }
    Ok(Catalog::new(routes)?)
}

/// The server-side tools' backends, as configured (a tool without one is not offered).
fn server_tools(config: &config::SearchConfig) -> anyhow::Result<tollgate_core::ServerTools> {
    use tollgate_gateway::search::{Brave, SearchBackend, SearchLimits, Searxng, XRecentSearch};
    let timeout = Duration::from_secs(config.timeout_seconds);
    let client = tollgate_gateway::upstream::http_client(Duration::from_secs(5), timeout)
        .context("building the search HTTP client")?;
    let web: Option<Arc<dyn SearchBackend>> = match &config.web {
        None => None,
        Some(web) if web.backend == "brave" => Some(Arc::new(Brave::new(
            web.url.as_deref().unwrap_or("https://api.search.brave.com"),
            web.api_key
                .as_ref()
                .map(|key| key.expose_secret().to_owned())
                .unwrap_or_default(),
            client.clone(),
        ))),
        Some(web) => Some(Arc::new(Searxng::new(
            web.url.as_deref().unwrap_or_default(),
            client.clone(),
        ))),
    };
    let x: Option<Arc<dyn SearchBackend>> = config.x.as_ref().map(|x| {
        Arc::new(XRecentSearch::new(
            &x.url,
            x.bearer_token.expose_secret().to_owned(),
            client.clone(),
        )) as Arc<dyn SearchBackend>
    });
    Ok(tollgate_core::ServerTools::new(
        web,
        x,
        tollgate_core::ToolSettings {
            max_rounds: config.max_rounds,
            max_calls_per_round: config.max_calls_per_round,
            deadline: Duration::from_secs(config.deadline_seconds),
            limits: SearchLimits {
                max_results: config.max_results as usize,
                max_snippet_chars: config.max_snippet_chars as usize,
                timeout,
            },
        },
    ))
}

/// The rate limiter: Redis's counters shared by every node when `redis_url` is set (falling
/// back to this node's share while Redis is unreachable, counted in a metric), else this
/// process's own.
fn rate_limiter(
    config: &Config,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<dyn tollgate_core::RateLimiter>> {
    let Some(url) = &config.redis_url else {
        return Ok(Arc::new(tollgate_core::LocalRateLimiter::default()));
    };
    let timeout = Duration::from_millis(config.rate_limits.redis_timeout_ms.unwrap_or(250).max(1));
    let counters = redis::RedisCounters::new(url.expose_secret(), timeout)?;
    let metrics = Arc::clone(metrics);
    Ok(Arc::new(tollgate_core::GlobalRateLimiter::new(
        Arc::new(counters),
        config.rate_limits.nodes(),
        Arc::clone(clock),
        move || metrics.rate_limit_fallback(),
    )))
}

/// How often keys' last-use times are written (the hot path only notes them in memory).
const LAST_USED_FLUSH: Duration = Duration::from_secs(30);

/// The gRPC surface's metrics: the same registry as HTTP's.
struct GrpcMetrics(Arc<Metrics>);

impl tollgate_grpc::Telemetry for GrpcMetrics {
    fn upstream_event(&self, event: &tollgate_gateway::pool::UpstreamEvent<'_>) {
        self.0.upstream_event(event);
    }

    fn charged(&self, model: &str, usage: &tollgate_domain::TokenUsage, charged: tollgate_core::Charged) {
        self.0.charged(model, usage, charged);
    }

    fn search(&self, call: &tollgate_core::SearchCall) {
        self.0.search(call);
    }

    fn refused(&self, error: &tollgate_core::AdmitError) {
        self.0.refused(error);
    }
}

/// The gRPC listener's TLS, read from `grpc_tls_cert` and `grpc_tls_key` (none: plaintext).
fn grpc_tls(config: &Config) -> anyhow::Result<Option<tollgate_grpc::Tls>> {
    let (Some(cert), Some(key)) = (&config.grpc_tls_cert, &config.grpc_tls_key) else {
        return Ok(None);
    };
    Ok(Some(tollgate_grpc::Tls {
        cert_pem: std::fs::read(cert).with_context(|| format!("reading grpc_tls_cert {}", cert.display()))?,
        key_pem: std::fs::read(key).with_context(|| format!("reading grpc_tls_key {}", key.display()))?,
    }))
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the operator's listener is (`metrics_listen`), if configured.
    pub operator_addr: Option<SocketAddr>,
    /// Where the gRPC API listens (`grpc_listen`), if configured.
    pub grpc_addr: Option<SocketAddr>,
    /// The store it uses (tests inspect it).
    pub store: Arc<dyn Store>,
    /// Its audit service (tests run retention with a moved clock).
    pub audit: AuditService,
    /// Its key service (tests flush last-use times).
    pub keys: KeyService,
    /// Wakes its mail sender (tests, after moving the clock to a retry time).
    pub mail_waker: MailWaker,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Asks the server to stop accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await.context("server task panicked")?
    }

    /// Waits for the server to end (after a shutdown signal).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// The payments service: Stripe when `payments.stripe_secret_key` is set, else purchases off.
fn payments(
    config: &Config,
    store: &Arc<dyn Store>,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<tollgate_core::billing::Payments> {
    let provider: Option<Arc<dyn tollgate_core::billing::PaymentProvider>> = match (
        &config.payments.stripe_secret_key,
        &config.payments.stripe_webhook_secret,
    ) {
        (Some(key), Some(webhook)) => Some(Arc::new(stripe::Stripe::new(
            &config.payments.stripe_api_base,
            key.clone(),
            webhook.clone(),
        )?)),
        _ => None,
    };
    Ok(tollgate_core::billing::Payments::new(
        Arc::clone(store),
        Arc::clone(clock),
        provider,
        tollgate_core::billing::PaymentSettings {
            return_url: format!("{}/billing", config.console_url.trim_end_matches('/')),
            ..config.payments.settings()?
        },
    ))
}

/// Migrates, wires and starts serving on `config.listen` (port 0 picks a free port). The
/// server stops when `signal` resolves or [`Server::shutdown`] is called.
pub async fn start(
    config: &Config,
    clock: Arc<dyn Clock>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Server> {
    let store = open_store(config).await?;
    let services = services(config, &store, &clock)?;
    let catalog = Arc::new(catalog(config, &clock)?);
    let credit_settings = config.billing.credit()?;
    let (usage, usage_task) = UsageRecorder::start(
        Arc::clone(&store),
        Arc::clone(&clock),
        credit_settings.default_hard_limit,
    );
    let credits = tollgate_core::billing::Credits::new(Arc::clone(&store), Arc::clone(&clock), credit_settings);
    let metrics = Arc::new(Metrics::new());
    let state = AppState::new(AppServices {
        store: Arc::clone(&store),
        clock: Arc::clone(&clock),
        accounts: services.accounts.clone(),
        cookies: tollgate_http::CookieSettings::for_console(&config.console_url),
        teams: services.teams.clone(),
        federation: tollgate_core::Federation::new(
            federation::identity_providers(config)?,
            Arc::clone(&store),
            Arc::clone(&clock),
            services.accounts.clone(),
        ),
        keys: services.keys.clone(),
        audit: services.audit.clone(),
        ledger: services.ledger.clone(),
        payments: services.payments.clone().with_credits(credits.clone()),
        inference: tollgate_core::Inference::new(
            Arc::clone(&catalog),
            rate_limiter(config, &clock, &metrics)?,
            services.tiers.clone(),
            usage,
            credits.clone(),
            Arc::clone(&clock),
        )
        .with_retention(services.retention.clone())
        .with_tools(server_tools(&config.search)?),
        // A deferred request still pending well after the longest a request may run was lost.
        deferred: tollgate_core::Deferred::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            &audit_key(config)?.derive(b"tollgate.deferred-completions.v1"),
            chrono::Duration::seconds(i64::try_from(config.billing.max_request_seconds.min(86_400)).unwrap_or(86_400))
                + chrono::Duration::minutes(5),
        ),
        responses: tollgate_core::Responses::new(
            Arc::clone(&store),
            Arc::clone(&clock),
            &audit_key(config)?.derive(b"tollgate.stored-responses.v1"),
            chrono::Duration::days(i64::from(config.retention.responses_days)),
        ),
        secret_scanning: tollgate_core::SecretScanning::new(
            services.keys.clone(),
            Arc::clone(&clock),
            Arc::new(GithubSigningKeys {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .context("building the HTTP client for GitHub's keys")?,
                url: config.secret_scanning.keys_url.clone(),
                token: config.secret_scanning.github_token.clone(),
            }),
        ),
        tiers: services.tiers.clone(),
        operators: tollgate_core::Operators::new(config.operator_addresses()?),
        metrics: Arc::clone(&metrics),
        settings: Arc::new(HttpSettings {
            console_url: config.console_url.trim_end_matches('/').to_owned(),
            owned_by: config.product_name.clone(),
            max_body_bytes: config.max_body_bytes,
            trusted_proxies: config.trusted_proxy_nets()?,
            metrics_token_hash: config.metrics_token.as_ref().map(|token| {
                use sha2::Digest as _;
                sha2::Sha256::digest(secrecy::ExposeSecret::expose_secret(token).trim().as_bytes()).into()
            }),
        }),
    });
    let grpc = match config.grpc_listen {
        Some(at) => {
            let listener = tollgate_grpc::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (grpc_listen)"))?;
            let services = tollgate_grpc::Services {
                inference: state.inference.clone(),
                keys: state.keys.clone(),
                deferred: state.deferred.clone(),
                responses: state.responses.clone(),
                clock: Arc::clone(&clock),
                console_url: state.settings.console_url.clone(),
                telemetry: Arc::new(GrpcMetrics(Arc::clone(&metrics))),
            };
            Some((listener, services, grpc_tls(config)?))
        }
        None => None,
    };
    let grpc_addr = grpc.as_ref().map(|(listener, ..)| listener.local_addr()).transpose()?;
    let operator_router = tollgate_http::operator_router(state.clone());
    let router = tollgate_http::router(state);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let limits = listener::ConnectionLimits {
        max: listener::fit_open_files(config.connections.max),
        max_per_client: config.connections.max_per_client,
        header_read_timeout: Duration::from_secs(config.connections.header_read_timeout_seconds),
        exempt: config.trusted_proxy_nets()?,
    };
    let operator = match config.metrics_listen {
        Some(at) => {
            let operator = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen on {at} (metrics_listen)"))?;
            Some(operator)
        }
        None => None,
    };
    let operator_addr = operator.as_ref().map(tokio::net::TcpListener::local_addr).transpose()?;
    let stop_jobs = CancellationToken::new();
    let last_used = services
        .keys
        .clone()
        .spawn_last_used_flusher(LAST_USED_FLUSH, stop_jobs.clone());
    let mail = mailer(config)?.map(|mailer| {
        MailDispatcher::new(Arc::clone(&store), Arc::clone(&clock), mailer).spawn(
            services.mail_waker.clone(),
            Duration::from_secs(config.mail.poll_seconds),
            stop_jobs.clone(),
        )
    });
    if mail.is_none() {
        tracing::info!("no mail.smtp_url: mail waits in the outbox (tollgate mail list)");
    }
    let purge = services
        .accounts
        .clone()
        .spawn_purge(Duration::from_secs(3600), stop_jobs.clone());
    let housekeeping = tollgate_core::Housekeeping::new(Arc::clone(&store), Arc::clone(&clock))
        .with_retention(services.retention.clone())
        .spawn(Duration::from_secs(3600), stop_jobs.clone());
    let probes = (config.upstream_probe_seconds > 0).then(|| {
        let (catalog, metrics) = (Arc::clone(&catalog), Arc::clone(&metrics));
        tollgate_core::jobs::every(
            "upstream probe",
            Duration::from_secs(config.upstream_probe_seconds),
            stop_jobs.clone(),
            move || {
                let (catalog, metrics) = (Arc::clone(&catalog), Arc::clone(&metrics));
                async move {
                    for model in catalog.models() {
                        model
                            .pool
                            .probe(Duration::from_secs(5), |event| metrics.upstream_event(&event))
                            .await;
                    }
                    Ok::<(), std::convert::Infallible>(())
                }
            },
        )
    });
    let credit_expiry = services
        .ledger
        .clone()
        .spawn_expiry(Duration::from_secs(3600), stop_jobs.clone());
    // Issues invoices and receipts and charges what is due; every few minutes, so a month's
    // invoices go out soon after `payments.invoice_after_hours`.
    let billing = services
        .payments
        .clone()
        .spawn_billing(Duration::from_secs(300), stop_jobs.clone());
    // Auto top-ups and alerts: every minute.
    let watch = services.payments.clone().spawn_watch(
        config.billing.max_invoiced_limit()?,
        Duration::from_secs(60),
        stop_jobs.clone(),
    );
    let domain_checks = services.teams.clone().spawn_domain_checks(
        Duration::from_secs(config.domain_recheck_hours * 3600),
        stop_jobs.clone(),
    );
    // Its own token: leases are returned only after the last usage is written.
    let stop_leases = CancellationToken::new();
    let lease_keeper = credits.spawn_keeper(stop_leases.clone());
    let retention = (config.audit.retention_days > 0).then(|| {
        services.audit.clone().spawn_retention(
            Duration::from_secs(config.audit.prune_interval_minutes * 60),
            stop_jobs.clone(),
        )
    });
    let (shutdown, shutdown_requested) = oneshot::channel::<()>();
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let task_store = Arc::clone(&store);
    let body_writer = services.retention.clone();
    let task = tokio::spawn(async move {
        let stopping = CancellationToken::new();
        let stop = {
            let stopping = stopping.clone();
            async move {
                tokio::select! {
                    () = signal => {}
                    _ = shutdown_requested => {}
                }
                tracing::info!("shutting down: no new connections; letting in-flight requests finish");
                stopping.cancel();
            }
        };
        let operator_task = operator.map(|operator| {
            let stopping = stopping.clone();
            tokio::spawn(listener::serve(
                operator,
                operator_router,
                listener::ConnectionLimits::operator(),
                async move { stopping.cancelled().await },
                Duration::from_secs(1),
            ))
        });
        let grpc_task = grpc.map(|(listener, services, tls)| {
            let stopping = stopping.clone();
            tokio::spawn(async move {
                let stopped = async move { stopping.cancelled().await };
                let serving = tollgate_grpc::serve(listener, services, tls, stopped);
                // Calls in flight get the grace period, as on the HTTP listener.
                if let Err(error) = serving.await {
                    tracing::error!(%error, "the gRPC listener failed");
                }
            })
        });
        let public = {
            let stopping = stopping.clone();
            listener::serve(
                listener,
                router,
                limits,
                async move { stopping.cancelled().await },
                grace,
            )
        };
        tokio::join!(stop, public);
        if let Some(operator_task) = operator_task {
            let _ = operator_task.await;
        }
        if let Some(grpc_task) = grpc_task
            && tokio::time::timeout(grace, grpc_task).await.is_err()
        {
            tracing::warn!("gRPC calls were still running after the grace period");
        }
        stop_jobs.cancel();
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        // Writes the last-use times gathered since its previous run.
        let _ = last_used.await;
        let _ = domain_checks.await;
        let _ = purge.await;
        let _ = housekeeping.await;
        let _ = credit_expiry.await;
        if let Some(probes) = probes {
            let _ = probes.await;
        }
        let _ = billing.await;
        let _ = watch.await;
        if let Some(mail) = mail {
            let _ = mail.await;
        }
        // Every handle to the usage recorder is gone with the router; it drains and ends.
        if tokio::time::timeout(grace, usage_task).await.is_err() {
            tracing::error!("usage recorder did not finish writing in time");
        }
        // Settled requests' bodies still in the writer's window are written now.
        body_writer.close().await;
        // Unused credit goes back to the team for other nodes (a lease still holding for a
        // request cut off by the grace period expires instead).
        stop_leases.cancel();
        let _ = lease_keeper.await;
        task_store.close().await;
        tracing::info!("stopped");
        Ok(())
    });
    tracing::info!(%addr, backend = ?store.backend(), "listening");
    if let Some(operator_addr) = operator_addr {
        tracing::info!(%operator_addr, "operator listener (/healthz, /readyz, /metrics)");
    }
    if let Some(grpc_addr) = grpc_addr {
        tracing::info!(%grpc_addr, tls = config.grpc_tls_cert.is_some(), "gRPC listener (xAI's gRPC API)");
    }
    Ok(Server {
        addr,
        operator_addr,
        grpc_addr,
        store,
        audit: services.audit,
        keys: services.keys,
        mail_waker: services.mail_waker,
        shutdown: Some(shutdown),
        task,
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
