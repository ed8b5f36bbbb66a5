//! The model catalog: public model names (and aliases) mapped to an upstream, the upstream's
//! own name for the model, and prices.

use std::borrow::Cow;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;
use tollgate_domain::{ModelPricing, Timestamp};

use crate::pool::{Held, Pool, UpstreamEvent};
use crate::upstream::GatewayError;
use crate::usage::TemplateOverhead;
use crate::wire::ChatCompletionRequest;

/// One servable model.
#[derive(Debug)]
pub struct ModelRoute {
    /// The public name clients use and responses echo.
    pub name: String,
    /// Other names that resolve to this model.
    pub aliases: Vec<String>,
    /// Where requests go: its upstreams, with the name each knows the model by.
    pub pool: Arc<Pool>,
    /// Prices, in ticks per token; `None`: not priced, so not served (it could not be billed).
    pub pricing: Option<ModelPricing>,
    /// The most output tokens one request may be charged for in advance.
    pub max_output_tokens: u64,
    /// When the model was added (shown in model lists).
    pub created: Timestamp,
    /// The inference endpoints its upstream serves (chat, embeddings).
    pub endpoints: Vec<tollgate_domain::Endpoint>,
    /// Its tokenizer, for `/v1/tokenize-text` and for estimates when an upstream reports no usage.
    pub tokenizer: Option<crate::tokenizer::Tokenizer>,
    /// What its chat template adds, for holds and estimates.
    pub template: TemplateOverhead,
    /// The server-side tools it may use (those the operator configured a backend for, unless
    /// the model's configuration names fewer).
    pub server_tools: Vec<tollgate_domain::ServerTool>,
}

/// Every model, by name and alias.
#[derive(Debug, Default)]
pub struct Catalog {
    routes: Vec<Arc<ModelRoute>>,
    by_name: HashMap<String, Arc<ModelRoute>>,
}

/// Two models claim the same name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("model name or alias '{0}' is used twice")]
pub struct DuplicateModelName(pub String);

impl Catalog {
    /// Builds the catalog; names and aliases must be unique.
    pub fn new(routes: Vec<ModelRoute>) -> Result<Self, DuplicateModelName> {
        let mut catalog = Catalog::default();
        for route in routes {
            let route = Arc::new(route);
            for name in std::iter::once(&route.name).chain(&route.aliases) {
                if catalog.by_name.insert(name.clone(), Arc::clone(&route)).is_some() {
                    return Err(DuplicateModelName(name.clone()));
                }
            }
            catalog.routes.push(route);
        }
        Ok(catalog)
    }

    /// The model a name or alias refers to.
    #[must_use]
    pub fn resolve(&self, name: &str) -> Option<&Arc<ModelRoute>> {
        self.by_name.get(name)
    }

    /// Every model, in configuration order.
    #[must_use]
    pub fn models(&self) -> &[Arc<ModelRoute>] {
        &self.routes
    }
}

/// A request as the chosen upstream names the model: borrowed when it already does.
fn chat_for(body: &ChatCompletionRequest, model: String) -> Cow<'_, ChatCompletionRequest> {
    if body.model == model {
        Cow::Borrowed(body)
    } else {
        let mut owned = body.clone();
        owned.model = model;
        Cow::Owned(owned)
    }
}

fn json_for(body: &Value, model: String) -> Cow<'_, Value> {
    if body["model"].as_str() == Some(model.as_str()) {
        Cow::Borrowed(body)
    } else {
        let mut owned = body.clone();
        owned["model"] = Value::String(model);
        Cow::Owned(owned)
    }
}

/// An upstream's SSE bytes, holding its slot until dropped.
pub type UpstreamStream = Held<Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>>;

impl ModelRoute {
    /// xAI's `fingerprint` / `system_fingerprint` of the model as configured: a digest of what
    /// its answers and prices depend on (upstream model, prices, output cap, tools), so it
    /// changes when they do; the upstream's name stays ours, hidden in the digest.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let pricing = self.pricing.unwrap_or_default();
        let digest = sha2::Sha256::digest(format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|{:?}",
            self.name,
            self.upstream_model(),
            pricing.prompt.get(),
            pricing.cached_prompt.get(),
            pricing.completion.get(),
            pricing.image.get(),
            self.max_output_tokens,
            pricing.web_search.get(),
            pricing.x_search.get(),
            self.server_tools
        ));
        format!("fp_{}", hex::encode(&digest[..5]))
    }

    /// The first upstream's name for the model: what requests are written with before one is
    /// chosen (rewritten only for an upstream that names it otherwise).
    #[must_use]
    pub fn upstream_model(&self) -> &str {
        self.pool
            .backends()
            .first()
            .map_or(self.name.as_str(), |backend| backend.model.as_str())
    }

    /// The prompt tokens of `body`, for when its upstream reported none: by the model's
    /// tokenizer (else about four characters a token) with its template's overhead.
    #[must_use]
    pub fn estimate_prompt(&self, body: &ChatCompletionRequest) -> u64 {
        crate::usage::estimate_prompt_tokens(body, self.tokenizer.as_ref(), self.template)
    }

    /// The completion tokens of a whole chat answer, for when its upstream reported none.
    #[must_use]
    pub fn estimate_completion(&self, answer: &Value) -> u64 {
        crate::usage::estimate_completion_tokens(answer, self.tokenizer.as_ref())
    }

    /// A whole chat completion from one of the upstreams (failing over; see [`Pool::call`]).
    pub async fn chat(
        &self,
        body: &ChatCompletionRequest,
        observe: impl Fn(UpstreamEvent<'_>),
    ) -> Result<crate::upstream::WholeChat, GatewayError> {
        let (answer, _slot) = self
            .pool
            .call(
                |upstream, model| {
                    let body = chat_for(body, model);
                    async move { upstream.chat(&body).await }
                },
                observe,
            )
            .await?;
        Ok(answer)
    }

    /// A streamed chat completion from one of the upstreams, and that upstream's name.
    pub async fn chat_stream(
        &self,
        body: &ChatCompletionRequest,
        observe: impl Fn(UpstreamEvent<'_>),
    ) -> Result<(UpstreamStream, String), GatewayError> {
        let (stream, slot) = self
            .pool
            .call(
                |upstream, model| {
                    let body = chat_for(body, model);
                    async move { upstream.chat_stream(&body).await }
                },
                observe,
            )
            .await?;
        let name = slot.upstream().name().to_owned();
        let stream: Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>> = Box::pin(stream);
        Ok((Held::new(stream, slot), name))
    }

    /// A JSON request to another endpoint of one of the upstreams (`path` below its base URL).
    pub async fn post_json(
        &self,
        path: &str,
        body: &Value,
        observe: impl Fn(UpstreamEvent<'_>),
    ) -> Result<Value, GatewayError> {
        let (answer, _slot) = self
            .pool
            .call(
                |upstream, model| {
                    let body = json_for(body, model);
                    async move { upstream.post_json(path, &body).await }
                },
                observe,
            )
            .await?;
        Ok(answer)
    }

    /// A streamed request to another endpoint of one of the upstreams, and that upstream's name.
    pub async fn post_stream(
        &self,
        path: &str,
        body: &Value,
        observe: impl Fn(UpstreamEvent<'_>),
    ) -> Result<(UpstreamStream, String), GatewayError> {
        let (stream, slot) = self
            .pool
            .call(
                |upstream, model| {
                    let body = json_for(body, model);
                    async move { upstream.post_stream(path, &body).await }
                },
                observe,
            )
            .await?;
        let name = slot.upstream().name().to_owned();
        let stream: Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>> = Box::pin(stream);
        Ok((Held::new(stream, slot), name))
    }
}
