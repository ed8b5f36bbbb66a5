//! Prometheus metrics, served as text on `/metrics`: requests by route, method and status,
//! request latency by route, upstream errors by upstream and kind, tokens by model, requests
//! refused by a rate limit by limit, requests limited without Redis while it was unreachable.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

/// A method as a label: the standard ones by name, anything else as `other`, so a client
/// inventing methods cannot grow the label set (each label set is kept for the process's life).
/// Routes are the router's own templates (or `unmatched`), so they are bounded too.
pub(crate) fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamNameLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: String,
}

/// The registry and its metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    upstream_errors: Family<UpstreamLabels, Counter>,
    upstream_ejections: Family<UpstreamNameLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    rate_limited: Family<LimitLabels, Counter>,
    out_of_credit: Counter,
    rate_limit_fallbacks: Counter,
    upstream_queued: prometheus_client::metrics::gauge::Gauge,
    bodies_dropped: Counter,
    beyond_hold_requests: Family<ModelLabels, Counter>,
    beyond_hold_ticks: Family<ModelLabels, Counter>,
    payment_events: Family<OutcomeLabels, Counter>,
    searches: Family<SearchLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SearchLabels {
    tool: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry.
    #[must_use]
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tollgate");
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.5 ms to about 65 s.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 18))
        });
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let rate_limited = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limited_requests",
            "Requests refused by a per-key limit (qps, qpm, tpm)",
            rate_limited.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream calls by upstream and kind",
            upstream_errors.clone(),
        );
        let upstream_ejections = Family::<UpstreamNameLabels, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Times an upstream was passed over for a while after consecutive failures, by upstream",
            upstream_ejections.clone(),
        );
        registry.register("tokens", "Tokens served by model and kind", tokens.clone());
        let out_of_credit = Counter::default();
        registry.register(
            "out_of_credit_requests",
            "Requests refused because their team's credit and spending limit did not cover them",
            out_of_credit.clone(),
        );
        let upstream_queued = prometheus_client::metrics::gauge::Gauge::default();
        registry.register(
            "upstream_queued_requests",
            "Requests waiting for a free upstream slot (every upstream of their model at its max_concurrency)",
            upstream_queued.clone(),
        );
        let bodies_dropped = Counter::default();
        registry.register(
            "request_bodies_dropped",
            "Request bodies not kept for abuse review because the writer could not take them (its queue full, or the database failing)",
            bodies_dropped.clone(),
        );
        let rate_limit_fallbacks = Counter::default();
        registry.register(
            "rate_limit_fallback_requests",
            "Requests whose rate limits were decided by this node alone (its share of each limit) because Redis was unreachable",
            rate_limit_fallbacks.clone(),
        );
        let beyond_hold_requests = Family::<ModelLabels, Counter>::default();
        let beyond_hold_ticks = Family::<ModelLabels, Counter>::default();
        registry.register(
            "charged_beyond_hold_requests",
            "Requests whose actual cost exceeded their credit hold (an upstream that ignored its output budget), by model",
            beyond_hold_requests.clone(),
        );
        registry.register(
            "charged_beyond_hold_ticks",
            "How far such requests' costs exceeded their holds, in USD ticks (1e-10 USD), by model",
            beyond_hold_ticks.clone(),
        );
        let payment_events = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payment_events",
            "Payment provider webhooks by outcome: processed, duplicate, ignored, refused (bad signature or body), failed (retry asked)",
            payment_events.clone(),
        );
        let searches = Family::<SearchLabels, Counter>::default();
        registry.register(
            "server_side_tool_calls",
            "Searches run for models' server-side tool calls, by tool (web_search, x_search) and outcome (charged, failed: not charged)",
            searches.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            upstream_errors,
            upstream_ejections,
            tokens,
            rate_limited,
            out_of_credit,
            rate_limit_fallbacks,
            upstream_queued,
            bodies_dropped,
            beyond_hold_requests,
            beyond_hold_ticks,
            payment_events,
            searches,
        }
    }

    /// A search run for a model's server-side tool call.
    pub fn search(&self, call: &tollgate_core::SearchCall) {
        let outcome = if call.outcome.is_ok() { "charged" } else { "failed" };
        self.searches
            .get_or_create(&SearchLabels {
                tool: call.tool.as_str(),
                outcome,
            })
            .inc();
    }

    /// A payment provider webhook answered with `outcome`.
    pub(crate) fn payment_event(&self, outcome: &'static str) {
        self.payment_events.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// A request refused at admission: counted when it was out of credit or rate limited.
    pub fn refused(&self, error: &tollgate_core::AdmitError) {
        use tollgate_core::{AdmitError, LimitScope};
        use tollgate_domain::ratelimit::LimitKind;
        match error {
            AdmitError::OutOfCredit(_) => {
                self.out_of_credit.inc();
            }
            AdmitError::RateLimited { kind, scope, .. } => {
                // The key's `qps`/`qpm`/`tpm`, or the team's `team_rps`/`team_rpm`/`team_tpm`.
                let limit = match (kind, matches!(scope, LimitScope::Team { .. })) {
                    (LimitKind::RequestsPerSecond, false) => "qps",
                    (LimitKind::RequestsPerMinute, false) => "qpm",
                    (LimitKind::TokensPerMinute, false) => "tpm",
                    (LimitKind::RequestsPerSecond, true) => "team_rps",
                    (LimitKind::RequestsPerMinute, true) => "team_rpm",
                    (LimitKind::TokensPerMinute, true) => "team_tpm",
                };
                self.rate_limited(limit);
            }
            _ => {}
        }
    }

    /// Counts what happened to an upstream: a failed call or probe, an ejection, a request
    /// waiting for a slot or done waiting.
    pub fn upstream_event(&self, event: &tollgate_gateway::pool::UpstreamEvent<'_>) {
        use tollgate_gateway::GatewayError;
        use tollgate_gateway::pool::UpstreamEvent;
        match event {
            UpstreamEvent::Failed { upstream, error } => {
                let kind = match error {
                    GatewayError::Unavailable(_) => "unavailable",
                    GatewayError::Timeout => "timeout",
                    GatewayError::Status { .. } => "status",
                    GatewayError::InvalidResponse(_) => "invalid_response",
                    GatewayError::AtCapacity => "at_capacity",
                };
                self.upstream_error(upstream, kind);
            }
            UpstreamEvent::Ejected { upstream } => self.upstream_ejected(upstream),
            UpstreamEvent::Queued => self.upstream_queue(1),
            UpstreamEvent::Unqueued => self.upstream_queue(-1),
        }
    }

    /// Requests waiting for an upstream slot changed by `by`.
    pub(crate) fn upstream_queue(&self, by: i64) {
        self.upstream_queued.inc_by(by);
    }

    /// A request's rate limits were decided without Redis (unreachable).
    pub fn rate_limit_fallback(&self) {
        self.rate_limit_fallbacks.inc();
    }

    /// A request charged `ticks` beyond its hold.
    pub(crate) fn beyond_hold(&self, model: &str, ticks: tollgate_domain::Ticks) {
        let labels = ModelLabels {
            model: model.to_owned(),
        };
        self.beyond_hold_requests.get_or_create(&labels).inc();
        self.beyond_hold_ticks
            .get_or_create(&labels)
            .inc_by(u64::try_from(ticks.get()).unwrap_or(0));
    }

    fn rate_limited(&self, limit: &str) {
        self.rate_limited
            .get_or_create(&LimitLabels {
                limit: limit.to_owned(),
            })
            .inc();
    }

    pub(crate) fn observe_request(&self, route: &str, method: &axum::http::Method, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method_label(method),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub(crate) fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn upstream_ejected(&self, upstream: &str) {
        self.upstream_ejections
            .get_or_create(&UpstreamNameLabels {
                upstream: upstream.to_owned(),
            })
            .inc();
    }

    /// A settled request: its tokens by kind, and what it was charged beyond its hold (an
    /// upstream that ignored its output budget), logged.
    pub fn charged(&self, model: &str, usage: &tollgate_domain::TokenUsage, charged: tollgate_core::Charged) {
        self.tokens(model, usage);
        if charged.beyond_hold.get() > 0 {
            tracing::warn!(model = %model, beyond_hold = charged.beyond_hold.get(), "the upstream produced more than its budget; charged in full");
            self.beyond_hold(model, charged.beyond_hold);
        }
    }

    pub(crate) fn tokens(&self, model: &str, usage: &tollgate_domain::TokenUsage) {
        for (kind, count) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if count > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.to_owned(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(count);
            }
        }
    }

    /// Brings the dropped bodies' counter up to `total` (read from the retention service at
    /// each scrape).
    pub(crate) fn bodies_dropped(&self, total: u64) {
        let counted = self.bodies_dropped.get();
        if total > counted {
            self.bodies_dropped.inc_by(total - counted);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}
