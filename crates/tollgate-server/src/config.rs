//! Configuration: built-in defaults, then a TOML file, then `TOLLGATE_*` environment variables
//! (nested keys with `__`, e.g. `TOLLGATE_MODELS__GROK__BASE_URL`). Unknown keys are errors that
//! name the key. Loaded once in `main` and passed down; there is no global.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format as _, Toml};
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use tollgate_domain::keys::KeyPrefix;

/// Tollgate's configuration. See `tollgate.example.toml` for every key, commented.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// The operator's listener (`/healthz`, `/readyz`, `/metrics`, no authentication): keep it
    /// off the public network. Unset: none.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// xAI's gRPC API (the official `xai-sdk`'s wire) on a listener of its own. Unset: off.
    #[serde(default)]
    pub grpc_listen: Option<SocketAddr>,
    /// A PEM certificate chain for the gRPC listener; with `grpc_tls_key`, it speaks TLS.
    /// Unset: plaintext (loopback, or behind a TLS-terminating proxy).
    #[serde(default)]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The PEM private key of `grpc_tls_cert`.
    #[serde(default)]
    pub grpc_tls_key: Option<PathBuf>,
    /// A bearer token that opens `/metrics` on the public listener. Unset: `/metrics` is served
    /// only on `metrics_listen`.
    #[serde(default)]
    pub metrics_token: Option<SecretString>,
    /// Limits on connections to the public listener (slow clients, floods).
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// `sqlite://path` (created if missing) or `postgres://…`.
    #[serde(default = "defaults::database_url")]
    pub database_url: String,
    /// The console's public URL, named in messages ("You can obtain an API key from …").
    #[serde(default = "defaults::console_url")]
    pub console_url: String,
    /// The operators' addresses: their accounts (the address verified, two-factor
    /// authentication on) open the operator pages at `/operator`. Empty: nobody does.
    #[serde(default)]
    pub operators: Vec<String>,
    /// The product name operators show (`owned_by` in model lists).
    #[serde(default = "defaults::product_name")]
    pub product_name: String,
    /// Prefix of inference API keys.
    #[serde(default = "defaults::api_key_prefix")]
    pub api_key_prefix: String,
    /// Prefix of management keys.
    #[serde(default = "defaults::management_key_prefix")]
    pub management_key_prefix: String,
    /// `text` or `json` logs.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` `EnvFilter` syntax.
    #[serde(default = "defaults::log_filter")]
    pub log_filter: String,
    /// Seconds in-flight requests get to finish after SIGTERM or Ctrl-C.
    #[serde(default = "defaults::shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// Largest request body, in bytes.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    /// A MaxMind-format city database (`.mmdb`: DB-IP City Lite, GeoLite2) placing sign-ins
    /// approximately. Without one, places are unknown.
    #[serde(default)]
    pub geoip_database: Option<PathBuf>,
    /// The DNS server verified domains are looked up at (`address:port`); default: the system's.
    #[serde(default)]
    pub dns_resolver: Option<SocketAddr>,
    /// Hours between re-checks of every team domain's DNS record.
    #[serde(default = "defaults::domain_recheck_hours")]
    pub domain_recheck_hours: u64,
    /// Proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client. Empty: the
    /// peer's address is the client's.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Seconds to wait for an upstream connection.
    #[serde(default = "defaults::upstream_connect_timeout_seconds")]
    pub upstream_connect_timeout_seconds: u64,
    /// Seconds an upstream may stay silent before the call fails.
    #[serde(default = "defaults::upstream_read_timeout_seconds")]
    pub upstream_read_timeout_seconds: u64,
    /// Consecutive failures (connect errors, 5xx, timeouts) after which an upstream is passed
    /// over while another of its model can serve; 0 never ejects.
    #[serde(default = "defaults::upstream_eject_after_failures")]
    pub upstream_eject_after_failures: u32,
    /// Seconds an ejected upstream is passed over.
    #[serde(default = "defaults::upstream_eject_seconds")]
    pub upstream_eject_seconds: u64,
    /// Seconds between active probes of every upstream (`GET {base_url}/models`): a failed
    /// probe counts as a failed call (ejecting after as many in a row), an answered one ends an
    /// ejection early. 0 (the default): passive health only.
    #[serde(default)]
    pub upstream_probe_seconds: u64,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Outbound email.
    #[serde(default)]
    pub mail: MailConfig,
    /// Console sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// External sign-in providers (OpenID Connect), by the name used in their URLs.
    #[serde(default)]
    pub oidc: BTreeMap<String, OidcConfig>,
    /// External sign-in providers speaking plain OAuth 2.0 (no ID token), such as X.
    #[serde(default)]
    pub oauth2: BTreeMap<String, OAuth2Config>,
    /// GitHub secret scanning (the partner endpoint `POST /webhooks/github/secret-scanning`).
    #[serde(default)]
    pub secret_scanning: SecretScanningConfig,
    /// Billing.
    #[serde(default)]
    pub billing: BillingConfig,
    /// Purchases through a payment provider (Stripe); off unless `payments.stripe_secret_key` is set.
    #[serde(default)]
    pub payments: PaymentsConfig,
    /// What is kept of inference, and for how long.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Redis, shared by every node: rate-limit counters across nodes (`redis://host:6379/0`, or
    /// `redis+unix:///path`; TLS to Redis is not built in). Unset: each node counts on its own.
    #[serde(default)]
    pub redis_url: Option<SecretString>,
    /// Rate limits per team and model, by tier; how nodes share them.
    #[serde(default)]
    pub rate_limits: RateLimitsConfig,
    /// Server-side tools (web search, X search) that Tollgate runs for the models; each is off
    /// unless its backend is configured.
    #[serde(default)]
    pub search: SearchConfig,
    /// Models, by public name.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
}

/// Server-side tools: the backends searched when a model asks, and how the loop is bounded.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Model calls of one request that may ask for searches; the model is then called once more,
    /// without the tools, to answer (default 3).
    #[serde(default = "defaults::search_rounds")]
    pub max_rounds: u32,
    /// Searches run per round at most; a model asking for more is told they were not run, and
    /// they are not charged (default 4).
    #[serde(default = "defaults::search_calls_per_round")]
    pub max_calls_per_round: u32,
    /// No search starts this long after the request began; the model then answers with what it
    /// has (default 60 seconds).
    #[serde(default = "defaults::search_deadline_seconds")]
    pub deadline_seconds: u64,
    /// How long one search may take before it fails (not charged; default 10 seconds).
    #[serde(default = "defaults::search_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Results per search at most (a request may ask for fewer; default 5, at most 20).
    #[serde(default = "defaults::search_max_results")]
    pub max_results: u32,
    /// Characters of each result's snippet at most, after markup is stripped (default 1000).
    #[serde(default = "defaults::search_snippet_chars")]
    pub max_snippet_chars: u32,
    /// The web search backend (unset: `web_search` is not offered).
    #[serde(default)]
    pub web: Option<WebSearchConfig>,
    /// The X search backend (unset: `x_search` is not offered).
    #[serde(default)]
    pub x: Option<XSearchConfig>,
}

impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            max_rounds: defaults::search_rounds(),
            max_calls_per_round: defaults::search_calls_per_round(),
            deadline_seconds: defaults::search_deadline_seconds(),
            timeout_seconds: defaults::search_timeout_seconds(),
            max_results: defaults::search_max_results(),
            max_snippet_chars: defaults::search_snippet_chars(),
            web: None,
            x: None,
        }
    }
}

impl SearchConfig {
    /// Checks the backends and bounds.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!((1..=10).contains(&self.max_rounds), "search.max_rounds must be 1 to 10");
        anyhow::ensure!(
            (1..=16).contains(&self.max_calls_per_round),
            "search.max_calls_per_round must be 1 to 16"
        );
        anyhow::ensure!(
            (1..=3_600).contains(&self.deadline_seconds) && (1..=300).contains(&self.timeout_seconds),
            "search.deadline_seconds must be 1 to 3600 and search.timeout_seconds 1 to 300"
        );
        anyhow::ensure!(
            (1..=tollgate_gateway::search::MAX_RESULTS as u32).contains(&self.max_results),
            "search.max_results must be 1 to {}",
            tollgate_gateway::search::MAX_RESULTS
        );
        anyhow::ensure!(
            (100..=20_000).contains(&self.max_snippet_chars),
            "search.max_snippet_chars must be 100 to 20000"
        );
        if let Some(web) = &self.web {
            match web.backend.as_str() {
                "searxng" => anyhow::ensure!(
                    web.url
                        .as_deref()
                        .is_some_and(|url| url.starts_with("http://") || url.starts_with("https://")),
                    "search.web.url must be the SearXNG instance's http(s) URL"
                ),
                "brave" => {
                    anyhow::ensure!(
                        web.api_key.is_some(),
                        "search.web.api_key (Brave's subscription token) is required"
                    );
                    anyhow::ensure!(
                        web.url.as_deref().is_none_or(https_or_loopback),
                        "search.web.url must be an https:// URL"
                    );
                }
                other => anyhow::bail!("search.web.backend must be searxng or brave, not '{other}'"),
            }
        }
        if let Some(x) = &self.x {
            anyhow::ensure!(https_or_loopback(&x.url), "search.x.url must be an https:// URL");
            anyhow::ensure!(
                !x.bearer_token.expose_secret().trim().is_empty(),
                "search.x.bearer_token must not be empty"
            );
        }
        Ok(())
    }

    /// The tools whose backend is configured.
    #[must_use]
    pub fn offered(&self) -> Vec<tollgate_domain::ServerTool> {
        use tollgate_domain::ServerTool;
        let mut tools = Vec::new();
        if self.web.is_some() {
            tools.push(ServerTool::WebSearch);
        }
        if self.x.is_some() {
            tools.push(ServerTool::XSearch);
        }
        tools
    }
}

/// Where web searches go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSearchConfig {
    /// `searxng` (a SearXNG instance's JSON API; enable `json` in its `search.formats`) or
    /// `brave` (the Brave Search API).
    pub backend: String,
    /// The backend's base URL: the SearXNG instance's (`http://127.0.0.1:8888`), or Brave's
    /// (default `https://api.search.brave.com`).
    #[serde(default)]
    pub url: Option<String>,
    /// Brave's subscription token.
    #[serde(default)]
    pub api_key: Option<SecretString>,
}

/// Where X searches go: X API v2's recent search.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XSearchConfig {
    /// X's API base URL (default `https://api.x.com`).
    #[serde(default = "defaults::x_api_base")]
    pub url: String,
    /// The operator's app bearer token.
    pub bearer_token: SecretString,
}

/// Rate limits per team and model by tier (xAI's scheme), and their sharing across nodes.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// How many nodes serve the same teams: while Redis is unreachable, each enforces this share
    /// of every limit on its own (1 without Redis). Default 1.
    #[serde(default)]
    pub nodes: Option<u32>,
    /// Milliseconds a Redis round trip may take before the node falls back to its own counters
    /// (default 250).
    #[serde(default)]
    pub redis_timeout_ms: Option<u64>,
    /// The tiers, lowest first: the first starts at $0; a team is in the highest its cumulative
    /// prepaid purchases and paid invoices reach, and never moves down. Empty: teams are not
    /// limited per model (keys' own limits still apply).
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
}

/// One tier: where it starts, and the limits it gives a team per model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// Cumulative spend (USD, an exact decimal) that reaches the tier.
    pub min_spend_usd: String,
    /// Requests per second, per model (unset: unlimited).
    #[serde(default)]
    pub rps: Option<u32>,
    /// Requests per minute, per model.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt, cached prompt, completion and reasoning), per model.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Other limits for some models, by public name.
    #[serde(default)]
    pub models: BTreeMap<String, TierLimitsConfig>,
}

/// A model's limits in one tier.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLimitsConfig {
    /// Requests per second (unset: unlimited).
    #[serde(default)]
    pub rps: Option<u32>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
}

impl RateLimitsConfig {
    /// The tier schedule.
    pub fn schedule(&self) -> anyhow::Result<tollgate_domain::ratelimit::TierSchedule> {
        use tollgate_domain::ratelimit::{Limits, Tier, TierSchedule};
        let limits = |rps: Option<u32>, rpm: Option<u32>, tpm: Option<u64>| Limits {
            qps: rps,
            qpm: rpm,
            tpm,
        };
        let mut tiers = Vec::with_capacity(self.tiers.len());
        for (index, tier) in self.tiers.iter().enumerate() {
            let min_spend = tollgate_domain::ledger::parse_usd(&tier.min_spend_usd)
                .map_err(|e| anyhow::anyhow!("rate_limits.tiers[{index}].min_spend_usd: {e}"))?;
            anyhow::ensure!(
                min_spend.get() >= 0,
                "rate_limits.tiers[{index}].min_spend_usd must not be negative"
            );
            let all = [tier.rps, tier.rpm]
                .into_iter()
                .chain(tier.models.values().flat_map(|m| [m.rps, m.rpm]))
                .flatten()
                .map(u64::from)
                .chain(tier.tpm)
                .chain(tier.models.values().filter_map(|m| m.tpm));
            for value in all {
                anyhow::ensure!(value >= 1, "rate_limits.tiers[{index}]: limits must be at least 1");
            }
            tiers.push(Tier {
                min_spend,
                default: limits(tier.rps, tier.rpm, tier.tpm),
                models: tier
                    .models
                    .iter()
                    .map(|(name, m)| (name.clone(), limits(m.rps, m.rpm, m.tpm)))
                    .collect(),
            });
        }
        TierSchedule::new(tiers).map_err(|e| anyhow::anyhow!("rate_limits.tiers: {e}"))
    }

    /// The node count (at least 1).
    #[must_use]
    pub fn nodes(&self) -> u32 {
        self.nodes.unwrap_or(1).max(1)
    }
}

/// What is kept of inference, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days a stored response of the Responses API (`store: true`, the default) is kept, to be
    /// fetched and continued with `previous_response_id`; then it is deleted. Default 30.
    #[serde(default = "defaults::responses_days")]
    pub responses_days: u32,
    /// Days every inference request's bodies (request and answer, compressed and encrypted)
    /// are kept for abuse review, then deleted (read with `tollgate requests show`, audited).
    /// Default 30; 0 keeps none.
    #[serde(default = "defaults::responses_days")]
    pub bodies_days: u32,
    /// Milliseconds the body writer gathers bodies after the first before writing them in one
    /// statement (nothing waits for it; at shutdown it writes at once). Default 50.
    #[serde(default = "defaults::bodies_write_ms")]
    pub bodies_write_ms: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            responses_days: defaults::responses_days(),
            bodies_days: defaults::responses_days(),
            bodies_write_ms: defaults::bodies_write_ms(),
        }
    }
}

/// Billing settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    /// The most a team's Admins may set as the monthly invoiced spending limit, in USD (an exact
    /// decimal, as a string): xAI's `hardSlAuto`. Default "0": prepaid credit only, unless the
    /// operator raises one team's maximum with `tollgate billing limit`.
    #[serde(default)]
    pub max_invoiced_limit_usd: Option<String>,
    /// The longest an inference request may run, in seconds; it is cut off then (a stream ends
    /// with an error event) and charged for what it produced. Default 600.
    #[serde(default = "defaults::max_request_seconds")]
    pub max_request_seconds: u64,
    /// How long a node's lease of a team's credit lives unless renewed, in seconds: what a
    /// crashed node's unspent lease is locked for. Must exceed `max_request_seconds` by a
    /// quarter at least. Default 900.
    #[serde(default = "defaults::lease_seconds")]
    pub lease_seconds: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            max_invoiced_limit_usd: None,
            max_request_seconds: defaults::max_request_seconds(),
            lease_seconds: defaults::lease_seconds(),
        }
    }
}

impl BillingConfig {
    /// The maximum, in ticks.
    pub fn max_invoiced_limit(&self) -> anyhow::Result<tollgate_domain::Ticks> {
        let Some(text) = &self.max_invoiced_limit_usd else {
            return Ok(tollgate_domain::Ticks::ZERO);
        };
        let limit = tollgate_domain::ledger::parse_usd(text)
            .map_err(|e| anyhow::anyhow!("billing.max_invoiced_limit_usd: {e}"))?;
        anyhow::ensure!(limit.get() >= 0, "billing.max_invoiced_limit_usd must not be negative");
        Ok(limit)
    }

    /// The credit leases' settings.
    pub fn credit(&self) -> anyhow::Result<tollgate_core::billing::CreditSettings> {
        anyhow::ensure!(
            self.max_request_seconds >= 1,
            "billing.max_request_seconds must be at least 1"
        );
        let settings = tollgate_core::billing::CreditSettings {
            lease_ttl: std::time::Duration::from_secs(self.lease_seconds),
            max_request: std::time::Duration::from_secs(self.max_request_seconds),
            default_hard_limit: self.max_invoiced_limit()?,
        };
        anyhow::ensure!(
            settings.is_consistent() && self.lease_seconds * 4 >= self.max_request_seconds * 5,
            "billing.lease_seconds ({}) must exceed billing.max_request_seconds ({}) by a quarter at least",
            self.lease_seconds,
            self.max_request_seconds
        );
        Ok(settings)
    }
}

/// Purchases of prepaid credit through Stripe (or a server speaking its protocol). With no secret
/// key, purchases are off: the console says so and operators grant credit by CLI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Stripe's API base URL.
    #[serde(default = "defaults::stripe_api_base")]
    pub stripe_api_base: String,
    /// The secret API key (`sk_live_…`); unset: purchases are off.
    #[serde(default)]
    pub stripe_secret_key: Option<SecretString>,
    /// The webhook endpoint's signing secret (`whsec_…`), for `/webhooks/stripe`.
    #[serde(default)]
    pub stripe_webhook_secret: Option<SecretString>,
    /// The smallest top-up, in USD (an exact decimal, as a string). Default "5".
    #[serde(default = "defaults::min_top_up_usd")]
    pub min_top_up_usd: String,
    /// The largest top-up, in USD. Default "10000".
    #[serde(default = "defaults::max_top_up_usd")]
    pub max_top_up_usd: String,
    /// Cards issued in these countries (ISO 3166-1 alpha-2, e.g. `["IN"]`) are refused before
    /// money moves.
    #[serde(default)]
    pub refused_card_countries: Vec<String>,
    /// Invoice numbers are `<prefix>-000001`, … in one gap-free series. Default "TG".
    #[serde(default = "defaults::invoice_prefix")]
    pub invoice_prefix: String,
    /// Hours after a month ends before its invoices are issued. Default 1.
    #[serde(default = "defaults::invoice_after_hours")]
    pub invoice_after_hours: u32,
    /// Days a monthly invoice may stay unpaid before the team's requests are refused (with a
    /// payment provider only). Default 14.
    #[serde(default = "defaults::unpaid_grace_days")]
    pub unpaid_grace_days: u32,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            stripe_api_base: defaults::stripe_api_base(),
            stripe_secret_key: None,
            stripe_webhook_secret: None,
            min_top_up_usd: defaults::min_top_up_usd(),
            max_top_up_usd: defaults::max_top_up_usd(),
            refused_card_countries: Vec::new(),
            invoice_prefix: defaults::invoice_prefix(),
            invoice_after_hours: defaults::invoice_after_hours(),
            unpaid_grace_days: defaults::unpaid_grace_days(),
        }
    }
}

impl PaymentsConfig {
    /// The service's settings: bounds in whole cents, refused countries parsed.
    pub fn settings(&self) -> anyhow::Result<tollgate_core::billing::PaymentSettings> {
        let whole_cents = |name: &str, text: &str| -> anyhow::Result<i64> {
            let ticks =
                tollgate_domain::ledger::parse_usd(text).map_err(|e| anyhow::anyhow!("payments.{name}: {e}"))?;
            anyhow::ensure!(
                ticks.get() > 0 && ticks.get() % tollgate_domain::Ticks::PER_CENT == 0,
                "payments.{name} must be a positive amount in whole cents"
            );
            Ok(ticks.get() / tollgate_domain::Ticks::PER_CENT)
        };
        let min_top_up_cents = whole_cents("min_top_up_usd", &self.min_top_up_usd)?;
        let max_top_up_cents = whole_cents("max_top_up_usd", &self.max_top_up_usd)?;
        anyhow::ensure!(
            min_top_up_cents <= max_top_up_cents,
            "payments.min_top_up_usd must not be above payments.max_top_up_usd"
        );
        let refused = self
            .refused_card_countries
            .iter()
            .map(|code| {
                code.parse::<tollgate_domain::CountryCode>()
                    .map_err(|e| anyhow::anyhow!("payments.refused_card_countries: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            (1..=12).contains(&self.invoice_prefix.len())
                && self
                    .invoice_prefix
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            "payments.invoice_prefix must be 1 to 12 upper-case letters or digits"
        );
        anyhow::ensure!(
            (1..=720).contains(&self.invoice_after_hours) && (1..=365).contains(&self.unpaid_grace_days),
            "payments.invoice_after_hours must be 1 to 720 and payments.unpaid_grace_days 1 to 365"
        );
        Ok(tollgate_core::billing::PaymentSettings {
            min_top_up_cents,
            max_top_up_cents,
            card_countries: tollgate_domain::CardCountryRule::new(refused),
            invoice_prefix: self.invoice_prefix.clone(),
            return_url: String::new(),
            close_grace: chrono::Duration::hours(i64::from(self.invoice_after_hours)),
            unpaid_grace: chrono::Duration::days(i64::from(self.unpaid_grace_days)),
        })
    }
}

/// Limits on connections to the public listener. Clients that open connections and send
/// nothing, or send headers a byte at a time, cannot starve the others.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Open connections in all; beyond it, new ones are closed at once. Also kept below the
    /// process's open-file limit (raised to its hard limit at start).
    #[serde(default = "defaults::max_connections")]
    pub max: usize,
    /// Open connections per client address (the TCP peer; trusted proxies are exempt, their
    /// clients sharing the proxy's address).
    #[serde(default = "defaults::max_connections_per_client")]
    pub max_per_client: usize,
    /// Seconds a request's headers may take to arrive, counted from when the connection is
    /// ready for a request: it also closes an idle keep-alive connection.
    #[serde(default = "defaults::header_read_timeout_seconds")]
    pub header_read_timeout_seconds: u64,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max: defaults::max_connections(),
            max_per_client: defaults::max_connections_per_client(),
            header_read_timeout_seconds: defaults::header_read_timeout_seconds(),
        }
    }
}

/// The audit log's chain key and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// File holding the chain key (64 hex digits). Created with a fresh random key, readable by
    /// its owner only, when missing and no `key` is given.
    #[serde(default = "defaults::audit_key_file")]
    pub key_file: PathBuf,
    /// The chain key itself (64 hex digits), instead of the file.
    #[serde(default)]
    pub key: Option<SecretString>,
    /// Days events are kept; 0 keeps them forever.
    #[serde(default = "defaults::audit_retention_days")]
    pub retention_days: u32,
    /// Minutes between runs of the retention job.
    #[serde(default = "defaults::audit_prune_interval_minutes")]
    pub prune_interval_minutes: u64,
}

/// Outbound email. Without `smtp_url`, mail waits in the outbox (`tollgate mail list`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// The SMTP server: `smtp://host:25` (add `?tls=required` for STARTTLS) or
    /// `smtps://user:password@host:465`.
    #[serde(default)]
    pub smtp_url: Option<SecretString>,
    /// The sender, `Name <address>`.
    #[serde(default = "defaults::mail_from")]
    pub from: String,
    /// Seconds between looks at the outbox for retries and mail queued by other nodes.
    #[serde(default = "defaults::mail_poll_seconds")]
    pub poll_seconds: u64,
}

/// One OpenID Connect provider. Register `<console_url>/api/auth/oidc/<name>/callback` as its
/// redirect URI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (discovery is at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// The client id Tollgate has there.
    pub client_id: String,
    /// The client secret.
    pub client_secret: SecretString,
    /// "Sign in with …" (default: the name).
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A provider speaking OAuth 2.0 without OpenID Connect (X, for one): authorization code with
/// PKCE, then the person's id, and name, read from a user-info endpoint with the access token.
/// `preset = "x"` fills in X's endpoints, scopes and fields; anything set here overrides it.
/// Register `<console_url>/api/auth/oidc/<name>/callback` as its redirect URI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// Known providers' settings.
    #[serde(default)]
    pub preset: Option<OAuth2Preset>,
    /// The client id Tollgate has there.
    pub client_id: String,
    /// The client secret (sent with HTTP Basic authentication to the token endpoint).
    pub client_secret: SecretString,
    /// "Sign in with …" (default: the preset's, else the name).
    #[serde(default)]
    pub display_name: Option<String>,
    /// Where the browser is sent to sign in.
    #[serde(default)]
    pub authorization_url: Option<String>,
    /// Where the code is exchanged for an access token.
    #[serde(default)]
    pub token_url: Option<String>,
    /// Answers, with the access token, who signed in (JSON).
    #[serde(default)]
    pub userinfo_url: Option<String>,
    /// Scopes to ask for.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Names the provider in stored identities, which are (issuer, subject): never change it once
    /// people sign in with it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// JSON pointer (RFC 6901) to the person's stable id in the user-info answer.
    #[serde(default)]
    pub subject_pointer: Option<String>,
    /// JSON pointer to their name, if any.
    #[serde(default)]
    pub name_pointer: Option<String>,
    /// JSON pointer to their address, if any. Plain OAuth 2.0 does not say whether an address is
    /// verified, so it never counts as verified: the account confirms one by mail.
    #[serde(default)]
    pub email_pointer: Option<String>,
}

/// Whether `url` is HTTPS, or plain HTTP to this machine (for tests and local providers).
pub(crate) fn https_or_loopback(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost")
}

/// Providers whose OAuth 2.0 settings Tollgate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OAuth2Preset {
    /// X (formerly Twitter): no address is given, so the account asks for one.
    X,
}

/// How long console sessions last.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Minutes without use after which a session ends.
    #[serde(default = "defaults::session_idle_minutes")]
    pub idle_minutes: u32,
    /// Hours after sign-in after which a session ends, however used.
    #[serde(default = "defaults::session_absolute_hours")]
    pub absolute_hours: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_minutes: defaults::session_idle_minutes(),
            absolute_hours: defaults::session_absolute_hours(),
        }
    }
}

/// Where GitHub's secret scanning signing keys are fetched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretScanningConfig {
    /// GitHub's keys endpoint (JSON `{"public_keys":[{"key_identifier","key"}]}`).
    #[serde(default = "defaults::secret_scanning_keys_url")]
    pub keys_url: String,
    /// A GitHub token (no scopes needed) for the keys endpoint's higher rate limit.
    #[serde(default)]
    pub github_token: Option<SecretString>,
}

impl Default for SecretScanningConfig {
    fn default() -> Self {
        Self {
            keys_url: defaults::secret_scanning_keys_url(),
            github_token: None,
        }
    }
}

impl Default for MailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: defaults::mail_from(),
            poll_seconds: defaults::mail_poll_seconds(),
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            key_file: defaults::audit_key_file(),
            key: None,
            retention_days: defaults::audit_retention_days(),
            prune_interval_minutes: defaults::audit_prune_interval_minutes(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// One of a model's upstreams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its OpenAI-compatible base URL.
    pub base_url: String,
    /// Its API key, if it wants one.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// Its name for the model (default: the model's `upstream_model`, else the public name).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Its share of requests (default 1); 0 makes it a backup, used only when no other can serve.
    #[serde(default = "defaults::upstream_weight")]
    pub weight: u32,
    /// The most requests of this model sent to it at once (unset: no cap).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Seconds to wait for a connection (default: `upstream_connect_timeout_seconds`).
    #[serde(default)]
    pub connect_timeout_seconds: Option<u64>,
    /// Seconds of silence before a call fails (default: `upstream_read_timeout_seconds`).
    #[serde(default)]
    pub read_timeout_seconds: Option<u64>,
}

/// One model and where it is served.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The upstream's OpenAI-compatible base URL, e.g. `http://127.0.0.1:8000/v1` (or several
    /// in `upstreams`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The upstream's API key, if it wants one.
    #[serde(default)]
    pub api_key: Option<SecretString>,
    /// The upstream's name for the model (default: the public name).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// The most requests of this model sent to `base_url` at once (unset: no cap). Over it, a
    /// request answers 429 with `retry-after`.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// With every upstream of the model at its `max_concurrency`, at most this many requests
    /// wait for a free slot (default 0: a request over the caps gets 429 at once).
    #[serde(default)]
    pub max_queue: Option<u32>,
    /// The longest a request waits in that queue before its 429 (default 30 seconds).
    #[serde(default)]
    pub queue_timeout_seconds: Option<u64>,
    /// Several upstreams serving the model, instead of `base_url`: requests are shared by
    /// weight, and fail over to another on a connect error or a 5xx.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Other names clients may use.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Price of a prompt token, in USD ticks (1e-10 USD), which is xAI's "1e-4 USD per 1M tokens".
    /// A model without prices is refused (it could not be billed); an explicit 0 is free.
    #[serde(default)]
    pub prompt_price: Option<i64>,
    /// Price of a cached prompt token (default: the prompt price; never above it).
    #[serde(default)]
    pub cached_prompt_price: Option<i64>,
    /// Price of a completion or reasoning token (set together with `prompt_price`).
    #[serde(default)]
    pub completion_price: Option<i64>,
    /// Price of a generated image, in USD cents (xAI's unit for images: 2 is $0.02), for a
    /// model serving `image`. Alone it prices the model (its tokens are then free).
    #[serde(default)]
    pub image_price: Option<i64>,
    /// The fee of one web search the model makes, in USD ticks per call (default 50000000:
    /// xAI's $5 per 1,000 calls). A search that fails is not charged.
    #[serde(default = "defaults::search_price")]
    pub web_search_price: i64,
    /// The fee of one X search, in USD ticks per call (default 50000000: $5 per 1,000 calls).
    #[serde(default = "defaults::search_price")]
    pub x_search_price: i64,
    /// The server-side tools this model may use: `web_search`, `x_search` (default: every tool
    /// whose backend is configured under `[search]`).
    #[serde(default)]
    pub server_side_tools: Option<Vec<String>>,
    /// The most output tokens one request of this model is held for in advance: a request's
    /// `max_tokens` is lowered to it, a request naming none is held for this many, and the
    /// upstream is told the budget (an upstream that ignores it is charged all the same).
    #[serde(default = "defaults::max_output_tokens")]
    pub max_output_tokens: u64,
    /// The inference endpoints the upstream serves for this model: `chat` (and the Responses
    /// API on top of it), `completions` (legacy), `embeddings`, `image` (generations; needs
    /// `image_price`) (default: chat only). A request to another answers 400.
    #[serde(default = "defaults::model_endpoints")]
    pub endpoints: Vec<String>,
    /// The tokenizer `/v1/tokenize-text` uses for this model: the path of the model's Hugging
    /// Face `tokenizer.json` (what its model server uses), or a built-in tiktoken encoding,
    /// `cl100k_base` or `o200k_base` (unset: the endpoint answers 400 for it).
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// Tokens the model's chat template adds per message (role markers, separators), counted in
    /// credit holds and in estimates when the upstream reports no usage (its own report
    /// includes them). Default 16, above common templates.
    #[serde(default)]
    pub template_tokens_per_message: Option<u64>,
    /// Tokens the chat template adds per request (a preamble, the assistant's opening). Default 64.
    #[serde(default)]
    pub template_tokens_per_request: Option<u64>,
}

mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    pub(super) const fn search_rounds() -> u32 {
        3
    }

    pub(super) const fn search_calls_per_round() -> u32 {
        4
    }

    pub(super) const fn search_deadline_seconds() -> u64 {
        60
    }

    pub(super) const fn search_timeout_seconds() -> u64 {
        10
    }

    pub(super) const fn search_max_results() -> u32 {
        5
    }

    pub(super) const fn search_snippet_chars() -> u32 {
        1_000
    }

    pub(super) const fn search_price() -> i64 {
        50_000_000
    }

    pub(super) fn x_api_base() -> String {
        "https://api.x.com".into()
    }

    pub(super) const fn domain_recheck_hours() -> u64 {
        24
    }
    pub(super) const fn session_idle_minutes() -> u32 {
        30
    }
    pub(super) const fn session_absolute_hours() -> u32 {
        12
    }
    pub(super) const fn upstream_weight() -> u32 {
        1
    }
    pub(super) const fn upstream_eject_after_failures() -> u32 {
        3
    }
    pub(super) const fn upstream_eject_seconds() -> u64 {
        30
    }
    pub(super) const fn responses_days() -> u32 {
        30
    }
    pub(super) const fn bodies_write_ms() -> u64 {
        50
    }
    pub(super) fn model_endpoints() -> Vec<String> {
        vec!["chat".into()]
    }

    pub(super) fn stripe_api_base() -> String {
        "https://api.stripe.com".into()
    }

    pub(super) fn invoice_prefix() -> String {
        "TG".into()
    }

    pub(super) fn invoice_after_hours() -> u32 {
        1
    }

    pub(super) fn unpaid_grace_days() -> u32 {
        14
    }

    pub(super) fn min_top_up_usd() -> String {
        "5".into()
    }

    pub(super) fn max_top_up_usd() -> String {
        "10000".into()
    }

    pub(super) fn secret_scanning_keys_url() -> String {
        "https://api.github.com/meta/public_keys/secret_scanning".into()
    }
    pub(super) fn mail_from() -> String {
        "Tollgate <no-reply@localhost>".into()
    }
    pub(super) const fn mail_poll_seconds() -> u64 {
        30
    }
    pub(super) fn audit_key_file() -> PathBuf {
        PathBuf::from("data/audit-chain.key")
    }
    pub(super) const fn audit_retention_days() -> u32 {
        365
    }
    pub(super) const fn audit_prune_interval_minutes() -> u64 {
        60
    }
    pub(super) fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub(super) fn database_url() -> String {
        "sqlite://data/tollgate.db".into()
    }
    pub(super) fn console_url() -> String {
        "http://127.0.0.1:8080".into()
    }
    pub(super) fn product_name() -> String {
        "tollgate".into()
    }
    pub(super) fn api_key_prefix() -> String {
        "tgk_".into()
    }
    pub(super) fn management_key_prefix() -> String {
        "tgm_".into()
    }
    pub(super) fn log_filter() -> String {
        "info".into()
    }
    pub(super) const fn shutdown_grace_seconds() -> u64 {
        30
    }
    pub(super) const fn max_body_bytes() -> usize {
        10 * 1024 * 1024
    }
    pub(super) const fn upstream_connect_timeout_seconds() -> u64 {
        5
    }
    pub(super) const fn upstream_read_timeout_seconds() -> u64 {
        600
    }
    pub(super) const fn max_request_seconds() -> u64 {
        600
    }
    pub(super) const fn lease_seconds() -> u64 {
        900
    }
    pub(super) const fn max_output_tokens() -> u64 {
        16_384
    }
    pub(super) const fn max_connections() -> usize {
        10_000
    }
    pub(super) const fn max_connections_per_client() -> usize {
        256
    }
    pub(super) const fn header_read_timeout_seconds() -> u64 {
        10
    }
}

/// Environment variables under our prefix that are not configuration keys.
const NOT_CONFIG: [&str; 2] = ["config", "test_"];

impl Config {
    /// Loads defaults, then `path` (required if `explicit`, else only if it exists), then the
    /// environment, and validates the result.
    pub fn load(path: &Path, explicit: bool) -> anyhow::Result<Self> {
        let mut figment = Figment::new();
        if path.exists() {
            figment = figment.merge(Toml::file_exact(path));
        } else if explicit {
            anyhow::bail!("configuration file {} does not exist", path.display());
        }
        let env = Env::prefixed("TOLLGATE_").split("__").filter(|key| {
            !NOT_CONFIG
                .iter()
                .any(|skip| key.as_str().to_ascii_lowercase().starts_with(skip))
        });
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration with defaults only, for tests to adjust with struct-update syntax.
    pub fn for_test(database_url: String) -> Self {
        let mut config: Config = Figment::new().extract().unwrap_or_else(|_| unreachable_defaults());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database_url = database_url;
        config.shutdown_grace_seconds = 5;
        config.audit.key = Some(SecretString::from(
            tollgate_domain::AuditChainKey::from_bytes([42; 32]).to_hex(),
        ));
        config
    }

    /// `trusted_proxies` parsed: `10.0.0.0/8`, or a single address.
    pub fn trusted_proxy_nets(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| anyhow::anyhow!("trusted_proxies: '{entry}' is not an address or CIDR range"))
            })
            .collect()
    }

    /// The operators' addresses, parsed.
    pub fn operator_addresses(&self) -> anyhow::Result<Vec<tollgate_domain::Email>> {
        self.operators
            .iter()
            .map(|address| {
                tollgate_domain::Email::parse(address).map_err(|e| anyhow::anyhow!("operators: '{address}': {e}"))
            })
            .collect()
    }

    /// Checks what serde cannot: prefixes, URLs, prices.
    pub fn validate(&self) -> anyhow::Result<()> {
        KeyPrefix::parse(&self.api_key_prefix).map_err(|e| anyhow::anyhow!("api_key_prefix: {e}"))?;
        KeyPrefix::parse(&self.management_key_prefix).map_err(|e| anyhow::anyhow!("management_key_prefix: {e}"))?;
        anyhow::ensure!(
            self.api_key_prefix != self.management_key_prefix,
            "api_key_prefix and management_key_prefix must differ, so a leaked key's kind is known"
        );
        anyhow::ensure!(
            self.database_url.starts_with("sqlite:")
                || self.database_url.starts_with("postgres:")
                || self.database_url.starts_with("postgresql:"),
            "database_url must start with sqlite:// or postgres://"
        );
        self.rate_limits.schedule()?;
        self.search.validate()?;
        self.operator_addresses()?;
        anyhow::ensure!(
            self.grpc_tls_cert.is_some() == self.grpc_tls_key.is_some(),
            "grpc_tls_cert and grpc_tls_key go together: set both for TLS, or neither"
        );
        anyhow::ensure!(
            self.grpc_tls_cert.is_none() || self.grpc_listen.is_some(),
            "grpc_tls_cert is set but grpc_listen is not: the gRPC API is off"
        );
        anyhow::ensure!(
            self.rate_limits.nodes != Some(0),
            "rate_limits.nodes must be at least 1"
        );
        if let Some(url) = &self.redis_url {
            let url = url.expose_secret();
            anyhow::ensure!(
                url.starts_with("redis://") || url.starts_with("redis+unix://"),
                "redis_url must start with redis:// or redis+unix:// (TLS to Redis is not built in)"
            );
        }
        anyhow::ensure!(
            self.audit.retention_days <= 36_500,
            "audit.retention_days must be at most 36500 (0 keeps events forever)"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.upstream_eject_seconds),
            "upstream_eject_seconds must be 1 to 86400"
        );
        anyhow::ensure!(
            (1..=3_650).contains(&self.retention.responses_days),
            "retention.responses_days must be 1 to 3650"
        );
        anyhow::ensure!(
            self.retention.bodies_days <= 3_650,
            "retention.bodies_days must be 0 (keep none) to 3650"
        );
        anyhow::ensure!(
            self.audit.prune_interval_minutes >= 1,
            "audit.prune_interval_minutes must be at least 1"
        );
        anyhow::ensure!(
            self.secret_scanning.keys_url.starts_with("https://")
                || self.secret_scanning.keys_url.starts_with("http://"),
            "secret_scanning.keys_url must be an http(s) URL"
        );
        anyhow::ensure!(
            (1..=10_080).contains(&self.sessions.idle_minutes) && (1..=720).contains(&self.sessions.absolute_hours),
            "sessions.idle_minutes must be 1 to 10080 and sessions.absolute_hours 1 to 720"
        );
        self.trusted_proxy_nets()?;
        self.billing.credit()?;
        self.payments.settings()?;
        anyhow::ensure!(
            https_or_loopback(&self.payments.stripe_api_base),
            "payments.stripe_api_base must be an https:// URL"
        );
        anyhow::ensure!(
            self.payments.stripe_secret_key.is_none() || self.payments.stripe_webhook_secret.is_some(),
            "payments.stripe_webhook_secret is required with payments.stripe_secret_key: credit is granted from \
             Stripe's events"
        );
        anyhow::ensure!(
            self.connections.max >= 1 && (1..=self.connections.max).contains(&self.connections.max_per_client),
            "connections.max must be at least 1, and connections.max_per_client 1 to connections.max"
        );
        anyhow::ensure!(
            (1..=300).contains(&self.connections.header_read_timeout_seconds),
            "connections.header_read_timeout_seconds must be 1 to 300"
        );
        if let Some(token) = &self.metrics_token {
            anyhow::ensure!(
                secrecy::ExposeSecret::expose_secret(token).len() >= 16,
                "metrics_token must be at least 16 characters"
            );
        }
        anyhow::ensure!(
            self.domain_recheck_hours >= 1,
            "domain_recheck_hours must be at least 1"
        );
        for name in self.oidc.keys().chain(self.oauth2.keys()) {
            anyhow::ensure!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "sign-in provider \"{name}\": provider names appear in URLs: lower-case letters, digits and '-'"
            );
        }
        if let Some(name) = self.oauth2.keys().find(|name| self.oidc.contains_key(*name)) {
            anyhow::bail!("sign-in provider \"{name}\" is configured twice, under [oidc] and [oauth2]");
        }
        for (name, provider) in &self.oidc {
            anyhow::ensure!(
                https_or_loopback(&provider.issuer),
                "oidc.{name}.issuer must be an https:// URL"
            );
        }
        anyhow::ensure!(self.mail.poll_seconds >= 1, "mail.poll_seconds must be at least 1");
        if let Some(url) = &self.mail.smtp_url {
            tollgate_core::SmtpMailer::new(secrecy::ExposeSecret::expose_secret(url), &self.mail.from)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        } else {
            self.mail
                .from
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| anyhow::anyhow!("mail.from: {e}"))?;
        }
        if let Some(key) = &self.audit.key {
            tollgate_domain::AuditChainKey::from_hex(secrecy::ExposeSecret::expose_secret(key))
                .map_err(|e| anyhow::anyhow!("audit.key: {e}"))?;
        }
        for (name, model) in &self.models {
            anyhow::ensure!(
                model.base_url.is_some() == model.upstreams.is_empty(),
                "models.{name}: set either base_url or upstreams"
            );
            let http = |url: &str| url.starts_with("http://") || url.starts_with("https://");
            anyhow::ensure!(
                model.base_url.as_deref().is_none_or(http) && model.upstreams.iter().all(|u| http(&u.base_url)),
                "models.{name}.base_url must be an http:// or https:// URL"
            );
            anyhow::ensure!(
                model.upstreams.is_empty() || (model.api_key.is_none() && model.max_concurrency.is_none()),
                "models.{name}: with upstreams, set api_key and max_concurrency on each upstream"
            );
            anyhow::ensure!(
                model.max_concurrency != Some(0) && model.upstreams.iter().all(|u| u.max_concurrency != Some(0)),
                "models.{name}: max_concurrency must be at least 1"
            );
            anyhow::ensure!(
                model.upstreams.is_empty() || model.upstreams.iter().any(|u| u.weight > 0),
                "models.{name}.upstreams: at least one upstream must have a weight above 0"
            );
            anyhow::ensure!(
                model
                    .upstreams
                    .iter()
                    .all(|u| u.connect_timeout_seconds != Some(0) && u.read_timeout_seconds != Some(0)),
                "models.{name}.upstreams: timeouts must be at least 1 second"
            );
            let prices = [model.prompt_price, model.cached_prompt_price, model.completion_price];
            anyhow::ensure!(
                prices.iter().flatten().all(|price| *price >= 0),
                "models.{name}: prices must not be negative"
            );
            anyhow::ensure!(
                model
                    .image_price
                    .is_none_or(|cents| (0..=MAX_IMAGE_PRICE_CENTS).contains(&cents)),
                "models.{name}: image_price must be between 0 and {MAX_IMAGE_PRICE_CENTS} (USD cents per image)"
            );
            anyhow::ensure!(
                model.prompt_price.is_some() == model.completion_price.is_some()
                    && (model.cached_prompt_price.is_none() || model.prompt_price.is_some()),
                "models.{name}: set prompt_price and completion_price together (0 is free; a model without prices is refused)"
            );
            anyhow::ensure!(
                model.cached_prompt_price.unwrap_or(0) <= model.prompt_price.unwrap_or(0),
                "models.{name}: cached_prompt_price must not be above prompt_price"
            );
            anyhow::ensure!(
                model.max_output_tokens >= 1,
                "models.{name}: max_output_tokens must be at least 1"
            );
            if let Some(tokenizer) = &model.tokenizer {
                use tollgate_gateway::tokenizer::Tokenizer;
                let file = tokenizer.ends_with(".json");
                anyhow::ensure!(
                    Tokenizer::named(tokenizer).is_some() || file,
                    "models.{name}.tokenizer: '{tokenizer}' is neither one of {:?} nor the path of a tokenizer.json",
                    Tokenizer::NAMES
                );
                anyhow::ensure!(
                    !file || std::path::Path::new(tokenizer).is_file(),
                    "models.{name}.tokenizer: no file at {tokenizer}"
                );
            }
            anyhow::ensure!(
                (0..=MAX_SEARCH_PRICE_TICKS).contains(&model.web_search_price)
                    && (0..=MAX_SEARCH_PRICE_TICKS).contains(&model.x_search_price),
                "models.{name}: web_search_price and x_search_price must be 0 to {MAX_SEARCH_PRICE_TICKS} (USD ticks per call)"
            );
            for tool in model.server_side_tools.iter().flatten() {
                anyhow::ensure!(
                    tollgate_domain::ServerTool::from_name(tool).is_some(),
                    "models.{name}.server_side_tools: '{tool}' is none of web_search, x_search"
                );
            }
            for endpoint in &model.endpoints {
                use tollgate_domain::Endpoint;
                let parsed = endpoint
                    .parse::<Endpoint>()
                    .map_err(|e| anyhow::anyhow!("models.{name}.endpoints: {e}"))?;
                anyhow::ensure!(
                    !matches!(
                        parsed,
                        Endpoint::Tokenize | Endpoint::Models | Endpoint::WebSearch | Endpoint::XSearch
                    ),
                    "models.{name}.endpoints: '{endpoint}' is served by Tollgate itself, not named here"
                );
                anyhow::ensure!(
                    parsed != Endpoint::Image || model.image_price.is_some(),
                    "models.{name}: a model serving image needs image_price (USD cents per image)"
                );
            }
        }
        Ok(())
    }
}

/// The highest fee of a search call: $100 a call, far above any real one.
const MAX_SEARCH_PRICE_TICKS: i64 = 100 * tollgate_domain::Ticks::PER_USD;

/// The highest image price, in USD cents: $10,000 an image, far above any real one, and
/// whose ticks fit easily in an `i64`.
const MAX_IMAGE_PRICE_CENTS: i64 = 1_000_000;

#[expect(clippy::panic, reason = "every field has a serde default, so this cannot happen")]
fn unreachable_defaults() -> Config {
    panic!("built-in configuration defaults do not deserialize")
}
