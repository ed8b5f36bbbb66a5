//! The model catalog: public model names (and aliases) mapped to an upstream, the upstream's
//! own name for the model, and prices.

use std::collections::HashMap;
use std::sync::Arc;

use tollgate_domain::{ModelPricing, Timestamp};

use crate::upstream::Upstream;

/// One servable model.
#[derive(Debug)]
pub struct ModelRoute {
    /// The public name clients use and responses echo.
    pub name: String,
    /// Other names that resolve to this model.
    pub aliases: Vec<String>,
    /// The name the upstream knows the model by.
    pub upstream_model: String,
    /// Where requests go.
    pub upstream: Arc<Upstream>,
    /// Prices, in ticks per token; `None`: not priced, so not served (it could not be billed).
    pub pricing: Option<ModelPricing>,
    /// The most output tokens one request may be charged for in advance.
    pub max_output_tokens: u64,
    /// When the model was added (shown in model lists).
    pub created: Timestamp,
    /// The inference endpoints its upstream serves (chat, embeddings).
    pub endpoints: Vec<tollgate_domain::Endpoint>,
    /// Its tokenizer, for `/v1/tokenize-text`.
    pub tokenizer: Option<crate::tokenizer::Tokenizer>,
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
