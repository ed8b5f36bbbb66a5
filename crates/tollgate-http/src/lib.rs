//! The HTTP edge: axum routers per surface, extractors that state authorization in the handler
//! signature, and the mapping of every error to its surface's shape.
//!
//! **Invariant:** only this crate knows HTTP status codes and JSON envelopes.

mod api;
mod audit;
mod billing;
mod error;
mod extract;
mod invoice_pdf;
mod management;
pub mod metrics;
mod middleware;
pub mod openapi;
mod ops;
mod pages;
mod payments;
mod v1;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use tollgate_core::{AccountService, AuditService, Federation, KeyService, SecretScanning, TeamService};
use tollgate_domain::Clock;
use tollgate_store::Store;

pub use api::CookieSettings;
pub use audit::ExportFormat;
pub use error::{ErrorBody, XaiError, code_text};
pub use metrics::Metrics;

/// Settings the HTTP layer needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// The console's public URL, named in error messages ("You can obtain an API key from …").
    pub console_url: String,
    /// `owned_by` in model lists.
    pub owned_by: String,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Peers whose `X-Forwarded-For` is believed (load balancers, reverse proxies).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// SHA-256 of the bearer token that opens `/metrics` on the public listener; `None`: the
    /// public listener has no `/metrics` (the operator's listener serves it).
    pub metrics_token_hash: Option<[u8; 32]>,
}

/// Everything a handler may use, shared: axum clones the state for every request (the router,
/// the middleware, each extractor), so a clone is one reference count, not one per service's
/// `Arc` (that cost a tenth of a request's CPU).
#[derive(Clone)]
pub struct AppState(Arc<AppServices>);

impl AppState {
    /// The state over `services`.
    pub fn new(services: AppServices) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppServices;
    fn deref(&self) -> &AppServices {
        &self.0
    }
}

/// The services and settings behind [`AppState`].
pub struct AppServices {
    /// Persistence (for readiness only; handlers go through services).
    pub store: Arc<dyn Store>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Accounts and sessions.
    pub accounts: AccountService,
    /// The console's session cookie.
    pub cookies: CookieSettings,
    /// Teams and members.
    pub teams: TeamService,
    /// External sign-in.
    pub federation: Federation,
    /// Keys.
    pub keys: KeyService,
    /// The audit log.
    pub audit: AuditService,
    /// The credit ledger.
    pub ledger: tollgate_core::billing::Ledger,
    /// Purchases, billing details, payment methods, the payment provider's events.
    pub payments: tollgate_core::billing::Payments,
    /// The inference use case (admit, settle), with the models, limits and usage writer.
    pub inference: tollgate_core::Inference,
    /// Deferred chat completions.
    pub deferred: tollgate_core::Deferred,
    /// Stored responses of the Responses API.
    pub responses: tollgate_core::Responses,
    /// GitHub secret scanning reports.
    pub secret_scanning: SecretScanning,
    /// Rate-limit tiers (the operator pages pin them).
    pub tiers: tollgate_core::tiers::Tiers,
    /// Who may open the operator pages.
    pub operators: tollgate_core::Operators,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub settings: Arc<HttpSettings>,
}

/// The operator's listener: `/healthz`, `/readyz` and `/metrics`, without authentication (it is
/// bound to a private address). Requests here are not counted in the metrics.
pub fn operator_router(state: AppState) -> Router {
    ops::operator_router()
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state)
}

/// The whole application: every surface, with middleware.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    Router::new()
        .merge(v1::router())
        .merge(management::router())
        .merge(billing::router())
        .merge(payments::router())
        .merge(audit::router())
        .merge(webhooks::router())
        .merge(api::router())
        .merge(pages::router())
        .merge(ops::router())
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .with_state(state)
}
