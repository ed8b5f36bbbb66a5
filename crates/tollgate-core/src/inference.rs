//! The inference use case: what every inference request goes through, whatever surface it came
//! by (REST today; gRPC and the deferred-completion worker will call the same two functions).
//!
//! 1. [`Inference::admit`]: the model is resolved (aliases included), the key's ACLs allow the
//!    endpoint and the model, the key's `qps`/`qpm`/`tpm` allow one more request, and the
//!    request's worst-case cost is held against its team's credit ([`crate::billing::credit`]).
//!    The answer is an [`Admission`], which carries everything settling needs.
//! 2. The caller calls the upstream (the gateway), holding it to
//!    [`Admission::output_per_choice`] and [`Admission::deadline`], and relays its answer.
//! 3. [`Inference::settle`]: the usage is priced exactly and recorded durably with its spend
//!    through the group commit before the caller sends its last byte; the hold is released and
//!    the tokens count against the key's `tpm`.
//!
//! An `Admission` dropped unsettled (an upstream error, a panic, a cancelled task) releases its
//! hold and charges nothing. Metrics and transport statuses stay at the edges.

use std::sync::Arc;
use std::time::Instant;

use tollgate_domain::ratelimit::{LimitDecision, LimitKind, Limits};
use tollgate_domain::{
    ApiKey, Clock, Endpoint, ModelPricing, RequestId, ServerTool, Ticks, Timestamp, TokenUsage, UsageRecord,
};
use tollgate_gateway::pool::UpstreamEvent;
use tollgate_gateway::search::RequestedTool;
use tollgate_gateway::usage::Demand;
use tollgate_gateway::wire::ChatCompletionRequest;
use tollgate_gateway::{Catalog, GatewayError, ModelRoute};

use crate::billing::credit::{CreditError, Credits, Hold};
use crate::ratelimit::{RateLimiter, Subject};
use crate::retention::{Retention, ToKeep};
use crate::tiers::Tiers;
use crate::tools::ServerTools;
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
    /// The model has no tokenizer configured.
    #[error("The model {0} has no tokenizer configured")]
    NoTokenizer(String),
    /// The model's upstream does not serve this endpoint.
    #[error("The model {model} does not support {endpoint}")]
    NotServed {
        /// The model.
        model: String,
        /// The endpoint asked for.
        endpoint: Endpoint,
    },
    /// The operator set no prices for the model, so it cannot be billed.
    #[error("The model {0} is not available: it has no prices configured")]
    Unpriced(String),
    /// A limit of the key, or of the team for the model, is reached.
    #[error("rate limited ({kind:?}: {actual})")]
    RateLimited {
        /// Which limit.
        kind: LimitKind,
        /// The count that refused it.
        actual: u64,
        /// Every limit's status of the subject that refused, for the answer's headers.
        decision: Box<LimitDecision>,
        /// Whose limit it is.
        scope: LimitScope,
    },
    /// The team's credit and invoice headroom do not cover the request's worst-case cost.
    #[error(
        "Your team {0} has either used all available credits or reached its monthly spending limit. To continue \
         making API requests, please purchase more credits or raise your spending limit."
    )]
    OutOfCredit(tollgate_domain::TeamId),
    /// A server-side tool the operator configured no backend for.
    #[error("The tool {0} is not offered here: this platform has no backend configured for it")]
    ToolNotOffered(ServerTool),
    /// A server-side tool the model may not use.
    #[error("The model {model} cannot use the tool {tool} here")]
    ToolNotForModel {
        /// The model.
        model: String,
        /// The tool.
        tool: ServerTool,
    },
    /// The team is blocked until an unpaid invoice is paid.
    #[error(
        "Your team {team} is blocked because invoice {invoice} is unpaid. Pay it in the console (Billing, \
         Invoices) or ask the operator; requests resume as soon as it is paid."
    )]
    TeamBlocked {
        /// The team.
        team: tollgate_domain::TeamId,
        /// The unpaid invoice's number.
        invoice: String,
    },
    /// The operator blocked the team, saying why.
    #[error("Your team {team} is blocked by the operator of this service: {reason}. Ask them to lift the block.")]
    TeamBlockedByOperator {
        /// The team.
        team: tollgate_domain::TeamId,
        /// The operator's reason.
        reason: String,
    },
    /// Credit could not be held, or the team's rate-limit tier read: the database is
    /// unavailable.
    #[error("credit or limits could not be checked: {0}")]
    Unavailable(tollgate_store::StoreError),
}

impl AdmitError {
    /// What the client is told, on any surface: xAI's texts (a rate limit names the key, or
    /// the team and the model, with "actual/limit"); nothing internal.
    #[must_use]
    pub fn client_message(&self) -> String {
        match self {
            Self::RateLimited {
                kind,
                actual,
                decision,
                scope,
            } => {
                let (what, unit) = match kind {
                    LimitKind::RequestsPerSecond => ("requests", "Requests per Second"),
                    LimitKind::RequestsPerMinute => ("requests", "Requests per Minute"),
                    LimitKind::TokensPerMinute => ("tokens", "Tokens per Minute"),
                };
                let limit = decision.status(*kind).map_or(0, |status| status.limit);
                match scope {
                    LimitScope::Key(redacted) => {
                        format!("Too many {what} for API key {redacted}. {unit} (actual/limit): {actual}/{limit}.")
                    }
                    LimitScope::Team { team, model } => format!(
                        "Too many {what} for team {team} and model {model}. Your team's rate limit is — {unit} \
                         (actual/limit): {actual}/{limit}. Spending more raises your team's tier and its limits."
                    ),
                }
            }
            Self::Unavailable(_) => "The team's credit or limits could not be checked; try again".to_owned(),
            other => other.to_string(),
        }
    }
}

/// Whose limit refused a request, for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitScope {
    /// The key's own limits; its redacted form.
    Key(String),
    /// The team's limits for the model, by its tier.
    Team {
        /// The team.
        team: tollgate_domain::TeamId,
        /// The model's public name.
        model: String,
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

/// A whole answer, settled: what [`Inference::answer`] gives.
#[derive(Debug)]
pub struct Answered {
    /// The upstream's answer, a chat completion (the final one, after a tool loop; the
    /// server-side calls taken out of it), with the upstream's model name and usage.
    pub answer: crate::tools::ChatAnswer,
    /// Every model call's tokens and every search charged.
    pub usage: TokenUsage,
    /// What it was charged.
    pub charged: Charged,
    /// The server-side searches run for it.
    pub searches: Vec<crate::tools::SearchCall>,
}

/// An answer of another endpoint, settled: what [`Inference::post`] gives.
#[derive(Debug)]
pub struct Posted {
    /// The upstream's answer, as it gave it.
    pub answer: serde_json::Value,
    /// Its usage.
    pub usage: TokenUsage,
    /// What it was charged.
    pub charged: Charged,
}

impl Answered {
    /// The answer in xAI's REST chat shape: the public `model` name, the usage with its cost,
    /// and the searches' `citations`.
    #[must_use]
    pub fn into_chat(self, model: &str) -> serde_json::Value {
        let mut answer = self.answer.into_value();
        answer["model"] = serde_json::Value::String(model.to_owned());
        answer["usage"] = tollgate_gateway::usage::usage_json(&self.usage, self.charged.cost);
        let citations = crate::tools::citations(&self.searches);
        if !citations.is_empty() {
            answer["citations"] = serde_json::json!(citations);
        }
        answer
    }

    /// [`Self::into_chat`], written as JSON. The upstream's own bytes are passed on with only
    /// `model`, `usage` and `citations` set (its members in its order), when it sent an object
    /// that nothing was taken out of; otherwise the read answer is written.
    #[must_use]
    pub fn into_chat_json(self, model: &str) -> Vec<u8> {
        if let Some(object) = self.answer.raw_object()
            && let Ok(name) = serde_json::to_string(model)
        {
            let usage = tollgate_gateway::usage::usage_json_text(&self.usage, self.charged.cost);
            let citations = crate::tools::citations(&self.searches);
            let citations = (!citations.is_empty()).then(|| serde_json::json!(citations).to_string());
            let mut set = vec![("model", name.as_str()), ("usage", usage.as_str())];
            if let Some(citations) = &citations {
                set.push(("citations", citations.as_str()));
            }
            return object.spliced_adding(&set).into_bytes();
        }
        serde_json::to_vec(&self.into_chat(model)).unwrap_or_default()
    }
}

/// Why [`Inference::answer`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The upstream failed (or the deadline passed). A tool loop that had used something
    /// before is charged for it: `settled` says what (`None`: nothing charged).
    #[error("{error}")]
    Upstream {
        /// What went wrong.
        #[source]
        error: GatewayError,
        /// What was charged all the same.
        settled: Option<(TokenUsage, Charged)>,
    },
    /// The answer came but could not be settled: it must not be given.
    #[error(transparent)]
    Settle(#[from] SettleError),
}

/// What is being admitted.
struct Request<'a> {
    endpoint: Endpoint,
    model: &'a str,
    demand: Demand,
    /// A chat request, whose prompt a tokenizer may count more tightly than its bytes.
    chat: Option<&'a ChatCompletionRequest>,
    /// The server-side tools it uses.
    tools: &'a [RequestedTool],
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
    /// The subjects whose token limits count its tokens.
    counted: Vec<Subject>,
    /// Its request body, kept with the answer when bodies are retained.
    request_body: Option<bytes::Bytes>,
    hold: Hold,
    output_per_choice: u64,
    deadline: Instant,
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

    /// The most output tokens per choice the upstream may produce: what the hold assumed.
    #[must_use]
    pub fn output_per_choice(&self) -> u64 {
        self.output_per_choice
    }

    /// When the request must be cut off (its credit lease is guaranteed only until then).
    #[must_use]
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The credit held for it.
    #[must_use]
    pub fn held(&self) -> Ticks {
        self.hold.amount()
    }

    /// Whether its bodies are kept when it is settled (its team does not have zero retention):
    /// a surface collects what it answers only then.
    #[must_use]
    pub fn keeps_bodies(&self) -> bool {
        !self.key.team_zero_retention
    }

    /// Its request body as the client sent it: kept with the answer (for abuse review) when
    /// the request is settled, unless its team keeps nothing.
    ///
    /// The body is copied: the bytes a surface hands over are often a slice of a larger buffer
    /// (a connection's read buffer, a gRPC frame), which the slice would keep alive, and the
    /// connection would read into a new one, for as long as the request runs: 8 KiB or more
    /// per open stream for a body of a few hundred bytes.
    pub fn keep_request(&mut self, body: bytes::Bytes) {
        if self.keeps_bodies() {
            self.request_body = Some(bytes::Bytes::copy_from_slice(&body));
        }
    }
}

/// A settled request's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charged {
    /// What it cost.
    pub cost: Ticks,
    /// How much the cost exceeded its hold (an upstream that ignored its output budget): charged
    /// all the same, and the team's balance may go below zero by this much.
    pub beyond_hold: Ticks,
}

/// The inference service.
#[derive(Clone)]
pub struct Inference {
    catalog: Arc<Catalog>,
    limiter: Arc<dyn RateLimiter>,
    tiers: Tiers,
    usage: UsageRecorder,
    credits: Credits,
    clock: Arc<dyn Clock>,
    retention: Option<Retention>,
    tools: ServerTools,
}

impl Inference {
    /// A service over these models, limits (keys' and, by `tiers`, teams'), credit and usage
    /// writer.
    pub fn new(
        catalog: Arc<Catalog>,
        limiter: Arc<dyn RateLimiter>,
        tiers: Tiers,
        usage: UsageRecorder,
        credits: Credits,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog,
            limiter,
            tiers,
            usage,
            credits,
            clock,
            retention: None,
            tools: ServerTools::none(),
        }
    }

    /// Runs server-side tools (web and X search) with these backends.
    #[must_use]
    pub fn with_tools(mut self, tools: ServerTools) -> Self {
        self.tools = tools;
        self
    }

    /// The server-side tools.
    #[must_use]
    pub fn tools(&self) -> &ServerTools {
        &self.tools
    }

    /// Whether answered requests' bodies are kept (so a surface collects what it answered).
    #[must_use]
    pub fn retains_bodies(&self) -> bool {
        self.retention
            .as_ref()
            .is_some_and(|r| r.keep_for() > chrono::Duration::zero())
    }

    /// Bodies dropped since start (the writer's queue full, or the database failing).
    #[must_use]
    pub fn bodies_dropped(&self) -> u64 {
        self.retention.as_ref().map_or(0, Retention::dropped)
    }

    /// Keeps answered requests' bodies with `retention`.
    #[must_use]
    pub fn with_retention(mut self, retention: Retention) -> Self {
        self.retention = Some(retention);
        self
    }

    /// The models.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The models `key` may list (it needs the `models` endpoint ACL): priced (a model without
    /// prices is refused, so it is not offered either), allowed by its model ACLs, and, with
    /// `serving`, served for that endpoint by their upstreams.
    pub fn listed_models<'a>(
        &'a self,
        key: &'a ApiKey,
        serving: Option<Endpoint>,
    ) -> Result<impl Iterator<Item = &'a Arc<ModelRoute>> + 'a, AdmitError> {
        if !key.acls.allows(Endpoint::Models) {
            return Err(AdmitError::EndpointDenied(Endpoint::Models));
        }
        Ok(self
            .catalog
            .models()
            .iter()
            .filter(move |model| Self::listable(key, model, serving)))
    }

    /// One model by name or alias, if [`Self::listed_models`] lists it; else
    /// [`AdmitError::UnknownModel`] (a model the key may not see does not exist for it).
    pub fn listed_model(
        &self,
        key: &ApiKey,
        name: &str,
        serving: Option<Endpoint>,
    ) -> Result<&Arc<ModelRoute>, AdmitError> {
        if !key.acls.allows(Endpoint::Models) {
            return Err(AdmitError::EndpointDenied(Endpoint::Models));
        }
        self.catalog
            .resolve(name)
            .filter(|model| Self::listable(key, model, serving))
            .ok_or_else(|| AdmitError::UnknownModel(name.to_owned()))
    }

    fn listable(key: &ApiKey, model: &ModelRoute, serving: Option<Endpoint>) -> bool {
        model.pricing.is_some()
            && key.acls.allows_model(&model.name)
            && serving.is_none_or(|endpoint| model.endpoints.contains(&endpoint))
    }

    /// The models the console's Tokenizer offers a signed-in member: those served here (priced)
    /// that have a tokenizer.
    pub fn tokenizable_models(&self) -> impl Iterator<Item = &str> {
        self.catalog
            .models()
            .iter()
            .filter(|model| model.pricing.is_some() && model.tokenizer.is_some())
            .map(|model| model.name.as_str())
    }

    /// The tokenizer of `model` (a name or an alias) for the console's Tokenizer: a member of
    /// any team may count tokens (nothing is charged, no key is involved), as
    /// [`Self::tokenizable_models`] offers them.
    pub fn console_tokenizer(
        &self,
        model: &str,
    ) -> Result<(String, tollgate_gateway::tokenizer::Tokenizer), AdmitError> {
        let route = self
            .catalog
            .resolve(model)
            .filter(|route| route.pricing.is_some())
            .ok_or_else(|| AdmitError::UnknownModel(model.to_owned()))?;
        let tokenizer = route
            .tokenizer
            .clone()
            .ok_or_else(|| AdmitError::NoTokenizer(route.name.clone()))?;
        Ok((route.name.clone(), tokenizer))
    }

    /// Authorizes a request that is not charged (tokenizing): the model, the key's ACLs and its
    /// request limits, as [`Self::admit`] checks them; the model's tokenizer.
    pub async fn authorize_tokenize(
        &self,
        key: &ApiKey,
        model: &str,
    ) -> Result<(String, tollgate_gateway::tokenizer::Tokenizer), AdmitError> {
        let route = self
            .catalog
            .resolve(model)
            .ok_or_else(|| AdmitError::UnknownModel(model.to_owned()))?;
        if let Some(reason) = &key.team_blocked_reason {
            return Err(AdmitError::TeamBlockedByOperator {
                team: key.team_id,
                reason: reason.clone(),
            });
        }
        if let Some(invoice) = &key.team_blocked_by {
            return Err(AdmitError::TeamBlocked {
                team: key.team_id,
                invoice: invoice.clone(),
            });
        }
        if !key.acls.allows(Endpoint::Tokenize) {
            return Err(AdmitError::EndpointDenied(Endpoint::Tokenize));
        }
        if !key.acls.allows_model(&route.name) {
            return Err(AdmitError::ModelDenied(route.name.clone()));
        }
        let tokenizer = route
            .tokenizer
            .clone()
            .ok_or_else(|| AdmitError::NoTokenizer(route.name.clone()))?;
        let limits = Limits {
            qps: key.qps,
            qpm: key.qpm,
            tpm: None,
        };
        if limits.any() {
            let checks = [(Subject::Key(key.id), limits)];
            let decisions = self.limiter.acquire(&checks, self.clock.now()).await;
            refused(key, &checks, &decisions)?;
        }
        Ok((route.name.clone(), tokenizer))
    }

    /// Admits a request of `key` to `endpoint` for `model` (a name or an alias), which may use
    /// up to `demand`, or says why not. `request_id` keys its usage record; `streamed` is
    /// recorded with it.
    pub async fn admit(
        &self,
        key: Arc<ApiKey>,
        endpoint: Endpoint,
        model: &str,
        demand: Demand,
        streamed: bool,
        request_id: RequestId,
    ) -> Result<Admission, AdmitError> {
        let request = Request {
            endpoint,
            model,
            demand,
            chat: None,
            tools: &[],
        };
        self.admit_request(key, request, streamed, request_id).await
    }

    /// Admits a chat request, as [`Self::admit`] does. When the team's credit does not cover
    /// the prompt's byte bound, the prompt is counted with the model's tokenizer (if it has
    /// one, and the prompt is not huge) and the hold tried again with that tighter bound: a team
    /// near its limit is not refused for what a tokenizer shows it can pay.
    ///
    /// With server-side `tools` (already offered to the model in `chat`), each must be offered
    /// here, granted by the key's ACLs and allowed for the model, and the hold covers the whole
    /// tool loop's worst case.
    pub async fn admit_chat(
        &self,
        key: Arc<ApiKey>,
        chat: &ChatCompletionRequest,
        tools: &[RequestedTool],
        streamed: bool,
        request_id: RequestId,
    ) -> Result<Admission, AdmitError> {
        let mut demand = Demand::of_chat(chat);
        demand.tools = self.tools.demand(tools);
        let request = Request {
            endpoint: Endpoint::Chat,
            model: &chat.model,
            demand,
            chat: Some(chat),
            tools,
        };
        self.admit_request(key, request, streamed, request_id).await
    }

    async fn admit_request(
        &self,
        key: Arc<ApiKey>,
        request: Request<'_>,
        streamed: bool,
        request_id: RequestId,
    ) -> Result<Admission, AdmitError> {
        let Request {
            endpoint,
            model,
            demand,
            chat,
            tools,
        } = request;
        let route = self
            .catalog
            .resolve(model)
            .cloned()
            .ok_or_else(|| AdmitError::UnknownModel(model.to_owned()))?;
        if let Some(reason) = &key.team_blocked_reason {
            return Err(AdmitError::TeamBlockedByOperator {
                team: key.team_id,
                reason: reason.clone(),
            });
        }
        if let Some(invoice) = &key.team_blocked_by {
            return Err(AdmitError::TeamBlocked {
                team: key.team_id,
                invoice: invoice.clone(),
            });
        }
        if !key.acls.allows(endpoint) {
            return Err(AdmitError::EndpointDenied(endpoint));
        }
        if !key.acls.allows_model(&route.name) {
            return Err(AdmitError::ModelDenied(route.name.clone()));
        }
        if !route.endpoints.contains(&endpoint) {
            return Err(AdmitError::NotServed {
                model: route.name.clone(),
                endpoint,
            });
        }
        for requested in tools {
            let tool = requested.tool;
            if !self.tools.offers(tool) {
                return Err(AdmitError::ToolNotOffered(tool));
            }
            if !key.acls.allows(tool.endpoint()) {
                return Err(AdmitError::EndpointDenied(tool.endpoint()));
            }
            if !route.server_tools.contains(&tool) {
                return Err(AdmitError::ToolNotForModel {
                    model: route.name.clone(),
                    tool,
                });
            }
        }
        let pricing = route.pricing.ok_or_else(|| AdmitError::Unpriced(route.name.clone()))?;
        let mut checks = Vec::with_capacity(2);
        let key_limits = Limits {
            qps: key.qps,
            qpm: key.qpm,
            tpm: key.tpm,
        };
        if key_limits.any() {
            checks.push((Subject::Key(key.id), key_limits));
        }
        let team_limits = self
            .tiers
            .limits(key.team_id, &route.name)
            .await
            .map_err(AdmitError::Unavailable)?;
        if let Some(limits) = team_limits.filter(Limits::any) {
            checks.push((Subject::TeamModel(key.team_id, Arc::from(route.name.as_str())), limits));
        }
        let now = self.clock.now();
        let decisions = if checks.is_empty() {
            Vec::new()
        } else {
            self.limiter.acquire(&checks, now).await
        };
        refused(&key, &checks, &decisions)?;
        let decision = LimitDecision::tightest(&decisions);
        let counted = checks
            .into_iter()
            .filter(|(_, limits)| limits.tpm.is_some())
            .map(|(subject, _)| subject)
            .collect();
        let output_per_choice = demand.output_per_choice(route.max_output_tokens);
        let out_of_credit = || AdmitError::OutOfCredit(key.team_id);
        let worst_case = pricing
            .upper_bound(&demand.worst_case(route.max_output_tokens, route.template))
            .map_err(|_| out_of_credit())?;
        let mut held = self.credits.hold(key.team_id, worst_case).await;
        if let (Err(CreditError::Exhausted), Some(chat), Some(tokenizer)) = (&held, chat, &route.tokenizer) {
            let counted = tollgate_gateway::usage::prompt_tokens_counted(chat, tokenizer);
            if let Some(prompt_tokens) = counted.filter(|tokens| *tokens < demand.prompt_tokens) {
                let tight = Demand {
                    prompt_tokens,
                    ..demand
                };
                let tight = pricing
                    .upper_bound(&tight.worst_case(route.max_output_tokens, route.template))
                    .map_err(|_| out_of_credit())?;
                held = self.credits.hold(key.team_id, tight).await;
            }
        }
        let hold = held.map_err(|error| match error {
            CreditError::Exhausted => out_of_credit(),
            CreditError::Store(error) => AdmitError::Unavailable(error),
        })?;
        let started = Instant::now();
        Ok(Admission {
            key,
            route,
            pricing,
            endpoint,
            request_id,
            started_at: now,
            started,
            streamed,
            limits: decision,
            counted,
            request_body: None,
            hold,
            output_per_choice,
            deadline: started + self.credits.settings().max_request,
        })
    }

    /// Answers an admitted chat request whole and settles it, for every surface: the tool loop
    /// when `tools` (already offered in `chat`) are asked for, else one upstream call, both held
    /// to the admission's deadline; usage is the upstream's report, else estimated (and
    /// recorded as such). `observe` hears of upstream failures, `progress` of each search as it
    /// finishes. The answer is kept with the request when bodies are retained.
    pub async fn answer(
        &self,
        admission: Admission,
        chat: ChatCompletionRequest,
        tools: &[RequestedTool],
        observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
        progress: &(dyn Fn(&crate::tools::SearchCall) + Send + Sync),
    ) -> Result<Answered, AnswerError> {
        let route = Arc::clone(admission.route());
        let run = self
            .tools
            .run(&route, chat, tools, admission.deadline(), observe, progress)
            .await;
        match run.answer {
            Ok(answer) => {
                // Kept as the upstream sent it when nothing was taken out, else as read.
                let kept = match answer.raw() {
                    Some(raw) if self.retains_bodies() && admission.keeps_bodies() => raw.to_vec(),
                    Some(_) => Vec::new(),
                    None => self.kept_json(&admission, &answer.value()),
                };
                let charged = self.settle(admission, run.usage, run.estimated, &kept).await?;
                Ok(Answered {
                    answer,
                    usage: run.usage,
                    charged,
                    searches: run.searches,
                })
            }
            Err(error) => {
                // A failed call is not charged; searches and earlier rounds that ran are.
                let settled = if run.usage == TokenUsage::default() {
                    None
                } else {
                    let charged = self.settle(admission, run.usage, run.estimated, &[]).await?;
                    Some((run.usage, charged))
                };
                Err(AnswerError::Upstream { error, settled })
            }
        }
    }

    /// Posts `body` to another of the upstream's endpoints (`path`: embeddings, images) by the
    /// admission's deadline and settles it with what `read_usage` finds in the answer (`true`:
    /// estimated): the answer, its usage and its charge. A failed call is not charged.
    pub async fn post(
        &self,
        admission: Admission,
        path: &str,
        body: &serde_json::Value,
        observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
        read_usage: impl FnOnce(&serde_json::Value) -> (TokenUsage, bool),
    ) -> Result<Posted, AnswerError> {
        let route = Arc::clone(admission.route());
        let answer = tokio::time::timeout_at(admission.deadline().into(), route.post_json(path, body, observe))
            .await
            .unwrap_or(Err(GatewayError::Timeout))
            .map_err(|error| AnswerError::Upstream { error, settled: None })?;
        let (usage, estimated) = read_usage(&answer);
        let kept = self.kept_json(&admission, &answer);
        let charged = self.settle(admission, usage, estimated, &kept).await?;
        Ok(Posted { answer, usage, charged })
    }

    /// `answer`'s bytes to keep with its request: nothing unless bodies are retained and its
    /// team keeps them.
    fn kept_json(&self, admission: &Admission, answer: &serde_json::Value) -> Vec<u8> {
        if self.retains_bodies() && admission.keeps_bodies() {
            serde_json::to_vec(answer).unwrap_or_default()
        } else {
            Vec::new()
        }
    }

    /// Settles `admission` with what the upstream used (`estimated` when counted by Tollgate
    /// rather than reported): prices it, records it durably with its spend, releases its hold,
    /// counts its tokens against the token limits, and keeps its bodies (`response`: the answer,
    /// whole as the model server gave it or a stream's events as sent) when bodies are retained.
    pub async fn settle(
        &self,
        mut admission: Admission,
        usage: TokenUsage,
        estimated: bool,
        response: &[u8],
    ) -> Result<Charged, SettleError> {
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
        self.usage
            .record(tollgate_store::Charge {
                record,
                pricing: admission.pricing,
            })
            .await?;
        let beyond_hold = Ticks::new(cost.get().saturating_sub(admission.hold.amount().get()).max(0));
        let keeps = admission.keeps_bodies();
        if let (Some(retention), Some(request), true) = (&self.retention, admission.request_body.take(), keeps) {
            retention.keep(
                ToKeep {
                    request_id: admission.request_id,
                    team_id: admission.key.team_id,
                    api_key_id: admission.key.id,
                    endpoint: admission.endpoint.as_str(),
                    model: route.name.clone(),
                    request,
                },
                response,
            );
        }
        self.credits.settled(admission.hold, cost);
        if !admission.counted.is_empty() {
            // Cached prompt tokens count too, as xAI counts them.
            self.limiter
                .record_tokens(&admission.counted, usage.total_tokens(), self.clock.now())
                .await;
        }
        Ok(Charged { cost, beyond_hold })
    }
}

/// The refusal among `decisions` (one per check), if any, as the error to answer with.
fn refused(key: &ApiKey, checks: &[(Subject, Limits)], decisions: &[LimitDecision]) -> Result<(), AdmitError> {
    let Some((decision, (subject, _))) = decisions
        .iter()
        .zip(checks)
        .find(|(decision, _)| decision.refused.is_some())
    else {
        return Ok(());
    };
    let Some((kind, actual)) = decision.refused else {
        return Ok(());
    };
    let scope = match subject {
        Subject::Key(_) => LimitScope::Key(key.redacted.clone()),
        Subject::TeamModel(team, model) => LimitScope::Team {
            team: *team,
            model: model.to_string(),
        },
    };
    Err(AdmitError::RateLimited {
        kind,
        actual,
        decision: Box::new(*decision),
        scope,
    })
}
