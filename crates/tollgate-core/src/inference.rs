//! The inference use case: what every inference request goes through, whatever surface it came
//! by (REST today; gRPC and the deferred-completion worker will call the same two functions).
//!
//! 1. [`Inference::admit`]: the model is resolved (aliases included), the key's ACLs allow the
//!    endpoint and the model, the key's `qps`/`qpm`/`tpm` allow one more request. The answer is
//!    an [`Admission`], which carries everything settling needs.
//! 2. The caller calls the upstream (the gateway) and relays its answer.
//! 3. [`Inference::settle`]: the usage is priced exactly and recorded durably through the group
//!    commit before the caller sends its last byte; the tokens count against the key's `tpm`.
//!
//! Metrics and transport statuses stay at the edges. The credit hold (the money path) joins
//! `admit`, and its release an `Admission` dropped unsettled, with the ledger.

use std::sync::Arc;
use std::time::Instant;

use tollgate_domain::ratelimit::{KeyLimits, LimitDecision, LimitKind};
use tollgate_domain::{ApiKey, Clock, Endpoint, ModelPricing, RequestId, Ticks, Timestamp, TokenUsage, UsageRecord};
use tollgate_gateway::{Catalog, ModelRoute};

use crate::ratelimit::RateLimiter;
use crate::usage::{UsageError, UsageRecorder};

/// Why a request was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// No model by that name or alias.
    #[error("The model {0} does not exist or your team does not have access to it.")]
    UnknownModel(String),
    /// The key's ACLs do not grant the endpoint.
    #[error("access to the {0} endpoint is denied")]
    EndpointDenied(Endpoint),
    /// The key's ACLs do not grant the model.
    #[error("access to model {0} is denied")]
    ModelDenied(String),
    /// The operator set no prices for the model, so it cannot be billed.
    #[error("The model {0} is not available: it has no prices configured")]
    Unpriced(String),
    /// A limit of the key is reached.
    #[error("rate limited ({kind:?}: {actual})")]
    RateLimited {
        /// Which limit.
        kind: LimitKind,
        /// The count that refused it.
        actual: u64,
        /// Every limit's status, for the answer's headers.
        decision: LimitDecision,
        /// The key's redacted form, for the message.
        redacted: String,
    },
}

/// Why a finished request could not be settled; the caller must not report it complete.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The price does not fit in an `i64` of ticks.
    #[error("the cost of this request overflows (model {0})")]
    CostOverflow(String),
    /// The usage record could not be made durable.
    #[error(transparent)]
    Record(#[from] UsageError),
}

/// An admitted request, until it is settled.
#[derive(Debug)]
pub struct Admission {
    key: Arc<ApiKey>,
    route: Arc<ModelRoute>,
    pricing: ModelPricing,
    endpoint: Endpoint,
    request_id: RequestId,
    started_at: Timestamp,
    started: Instant,
    streamed: bool,
    limits: Option<LimitDecision>,
}

impl Admission {
    /// The model route it goes to.
    #[must_use]
    pub fn route(&self) -> &Arc<ModelRoute> {
        &self.route
    }

    /// The key's limits as they stood at admission (`None` for a key without limits), for the
    /// answer's `x-ratelimit-*` headers.
    #[must_use]
    pub fn limits(&self) -> Option<&LimitDecision> {
        self.limits.as_ref()
    }

    /// The model's prices.
    #[must_use]
    pub fn pricing(&self) -> &ModelPricing {
        &self.pricing
    }
}

/// The inference service.
#[derive(Clone)]
pub struct Inference {
    catalog: Arc<Catalog>,
    limiter: Arc<dyn RateLimiter>,
    usage: UsageRecorder,
    clock: Arc<dyn Clock>,
}

impl Inference {
    /// A service over these models, limits and usage writer.
    pub fn new(
        catalog: Arc<Catalog>,
        limiter: Arc<dyn RateLimiter>,
        usage: UsageRecorder,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog,
            limiter,
            usage,
            clock,
        }
    }

    /// The models.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Admits a request of `key` to `endpoint` for `model` (a name or an alias), or says why
    /// not. `request_id` keys its usage record; `streamed` is recorded with it.
    pub async fn admit(
        &self,
        key: Arc<ApiKey>,
        endpoint: Endpoint,
        model: &str,
        streamed: bool,
        request_id: RequestId,
    ) -> Result<Admission, AdmitError> {
        let route = self
            .catalog
            .resolve(model)
            .cloned()
            .ok_or_else(|| AdmitError::UnknownModel(model.to_owned()))?;
        if !key.acls.allows(endpoint) {
            return Err(AdmitError::EndpointDenied(endpoint));
        }
        if !key.acls.allows_model(&route.name) {
            return Err(AdmitError::ModelDenied(route.name.clone()));
        }
        let pricing = route.pricing.ok_or_else(|| AdmitError::Unpriced(route.name.clone()))?;
        let limits = KeyLimits {
            qps: key.qps,
            qpm: key.qpm,
            tpm: key.tpm,
        };
        let now = self.clock.now();
        let decision = if limits.any() {
            let decision = self.limiter.acquire(key.id, &limits, now).await;
            if let Some((kind, actual)) = decision.refused {
                return Err(AdmitError::RateLimited {
                    kind,
                    actual,
                    decision,
                    redacted: key.redacted.clone(),
                });
            }
            Some(decision)
        } else {
            None
        };
        Ok(Admission {
            key,
            route,
            pricing,
            endpoint,
            request_id,
            started_at: now,
            started: Instant::now(),
            streamed,
            limits: decision,
        })
    }

    /// Settles `admission` with what the upstream used (`estimated` when counted by Tollgate
    /// rather than reported): prices it, records it durably, and counts its tokens against the
    /// key's `tpm`. Returns the cost.
    pub async fn settle(&self, admission: Admission, usage: TokenUsage, estimated: bool) -> Result<Ticks, SettleError> {
        let route = &admission.route;
        let cost = admission
            .pricing
            .cost(&usage)
            .map_err(|_| SettleError::CostOverflow(route.name.clone()))?;
        let record = UsageRecord {
            request_id: admission.request_id,
            team_id: admission.key.team_id,
            api_key_id: admission.key.id,
            model: route.name.clone(),
            endpoint: admission.endpoint,
            usage,
            cost,
            estimated,
            streamed: admission.streamed,
            started_at: admission.started_at,
            duration_ms: u64::try_from(admission.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        };
        self.usage.record(record).await?;
        self.limiter
            .record_tokens(admission.key.id, usage.total_tokens(), self.clock.now())
            .await;
        Ok(cost)
    }
}
