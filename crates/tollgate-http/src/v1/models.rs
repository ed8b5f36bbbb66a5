//! The model listings: OpenAI's `/v1/models`, and xAI's per-kind listings with prices
//! (`/v1/language-models`, `/v1/embedding-models`, `/v1/image-generation-models`). A key needs
//! the `models` endpoint ACL and sees only the priced models its model ACLs allow.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use tollgate_domain::{ApiKey, Endpoint};
use tollgate_gateway::ModelRoute;

use super::admission_refused;
use crate::AppState;
use crate::error::XaiError;
use crate::extract::ApiKeyAuth;

/// A model, in OpenAI's list shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ModelView {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: String,
}

impl ModelView {
    fn of(model: &ModelRoute, owned_by: &str) -> Self {
        Self {
            id: model.name.clone(),
            object: "model",
            created: model.created.timestamp(),
            owned_by: owned_by.to_owned(),
        }
    }
}

/// `GET /v1/models` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ModelListView {
    object: &'static str,
    data: Vec<ModelView>,
}

/// The models `key` may list, serving `endpoint` if given; 403 without the `models` ACL.
fn listed<'a>(
    state: &'a AppState,
    key: &'a ApiKey,
    serving: Option<Endpoint>,
) -> Result<impl Iterator<Item = &'a Arc<ModelRoute>> + 'a, XaiError> {
    state
        .inference
        .listed_models(key, serving)
        .map_err(|error| admission_refused(state, error))
}

/// One model by name or alias, as [`listed`] would list it; else xAI's 404.
fn one<'a>(
    state: &'a AppState,
    key: &ApiKey,
    name: &str,
    serving: Option<Endpoint>,
) -> Result<&'a Arc<ModelRoute>, XaiError> {
    state
        .inference
        .listed_model(key, name, serving)
        .map_err(|error| admission_refused(state, error))
}

/// List the models this key may use.
#[utoipa::path(get, path = "/v1/models", tag = "inference",
    responses((status = 200, body = ModelListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn list_models(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
) -> Result<Json<ModelListView>, XaiError> {
    let owned_by = &state.settings.owned_by;
    let data = listed(&state, &key, None)?
        .map(|model| ModelView::of(model, owned_by))
        .collect();
    Ok(Json(ModelListView { object: "list", data }))
}

/// One model (by name or alias), in OpenAI's shape.
#[utoipa::path(get, path = "/v1/models/{model_id}", tag = "inference",
    params(("model_id" = String, Path, description = "A model's name or alias")),
    responses((status = 200, body = ModelView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_model(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(model_id): Path<String>,
) -> Result<Json<ModelView>, XaiError> {
    let model = one(&state, &key, &model_id, None)?;
    Ok(Json(ModelView::of(model, &state.settings.owned_by)))
}

/// A language model with its prices (xAI's shape). Prices are xAI's unit, 1e-4 USD per million
/// tokens — which is exactly USD ticks (1e-10 USD) per token, the unit Tollgate bills in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LanguageModelView {
    id: String,
    /// Changes when the model's serving or prices change.
    fingerprint: String,
    created: i64,
    object: &'static str,
    owned_by: String,
    version: String,
    aliases: Vec<String>,
    input_modalities: Vec<&'static str>,
    output_modalities: Vec<&'static str>,
    prompt_text_token_price: i64,
    cached_prompt_text_token_price: i64,
    prompt_image_token_price: i64,
    completion_text_token_price: i64,
    /// xAI's field: the fee of one web search, in USD ticks (0 when the model cannot search).
    search_price: i64,
    /// The server-side tools the model may use here, each with its fee per call in USD ticks
    /// (ours).
    server_side_tools: Vec<ServerToolView>,
    /// The most output one request may produce (ours).
    max_output_tokens: u64,
}

/// A server-side tool a model may use, and its fee.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ServerToolView {
    /// `web_search` or `x_search`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The fee of one call, in USD ticks (1e-10 USD).
    price_per_call: i64,
}

impl LanguageModelView {
    fn of(model: &ModelRoute, owned_by: &str) -> Self {
        let pricing = model.pricing.unwrap_or_default();
        Self {
            id: model.name.clone(),
            fingerprint: model.fingerprint(),
            created: model.created.timestamp(),
            object: "model",
            owned_by: owned_by.to_owned(),
            version: "1.0".into(),
            aliases: model.aliases.clone(),
            input_modalities: vec!["text"],
            output_modalities: vec!["text"],
            prompt_text_token_price: pricing.prompt.get(),
            cached_prompt_text_token_price: pricing.cached_prompt.get(),
            prompt_image_token_price: pricing.prompt.get(),
            completion_text_token_price: pricing.completion.get(),
            search_price: if model.server_tools.contains(&tollgate_domain::ServerTool::WebSearch) {
                pricing.web_search.get()
            } else {
                0
            },
            server_side_tools: model
                .server_tools
                .iter()
                .map(|tool| ServerToolView {
                    kind: tool.as_str(),
                    price_per_call: match tool {
                        tollgate_domain::ServerTool::WebSearch => pricing.web_search.get(),
                        tollgate_domain::ServerTool::XSearch => pricing.x_search.get(),
                    },
                })
                .collect(),
            max_output_tokens: model.max_output_tokens,
        }
    }
}

/// `GET /v1/language-models` (and `/v1/embedding-models`) answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct LanguageModelsView {
    models: Vec<LanguageModelView>,
}

/// The models this key may use whose upstreams serve `endpoint`, with their prices.
fn models_serving(state: &AppState, key: &ApiKey, endpoint: Endpoint) -> Result<Json<LanguageModelsView>, XaiError> {
    let owned_by = &state.settings.owned_by;
    Ok(Json(LanguageModelsView {
        models: listed(state, key, Some(endpoint))?
            .map(|model| LanguageModelView::of(model, owned_by))
            .collect(),
    }))
}

/// The language models this key may use, with their prices (xAI's shape).
#[utoipa::path(get, path = "/v1/language-models", tag = "inference",
    responses((status = 200, body = LanguageModelsView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn list_language_models(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
) -> Result<Json<LanguageModelsView>, XaiError> {
    models_serving(&state, &key, Endpoint::Chat)
}

/// One language model (by name or alias), with its prices.
#[utoipa::path(get, path = "/v1/language-models/{model_id}", tag = "inference",
    params(("model_id" = String, Path, description = "A model's name or alias")),
    responses((status = 200, body = LanguageModelView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_language_model(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(model_id): Path<String>,
) -> Result<Json<LanguageModelView>, XaiError> {
    let model = one(&state, &key, &model_id, Some(Endpoint::Chat))?;
    Ok(Json(LanguageModelView::of(model, &state.settings.owned_by)))
}

/// The embedding models this key may use, with their prices (the language-model fields).
#[utoipa::path(get, path = "/v1/embedding-models", tag = "inference",
    responses((status = 200, body = LanguageModelsView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn list_embedding_models(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
) -> Result<Json<LanguageModelsView>, XaiError> {
    models_serving(&state, &key, Endpoint::Embeddings)
}

/// One embedding model (by name or alias), with its prices.
#[utoipa::path(get, path = "/v1/embedding-models/{model_id}", tag = "inference",
    params(("model_id" = String, Path, description = "A model's name or alias")),
    responses((status = 200, body = LanguageModelView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_embedding_model(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(model_id): Path<String>,
) -> Result<Json<LanguageModelView>, XaiError> {
    let model = one(&state, &key, &model_id, Some(Endpoint::Embeddings))?;
    Ok(Json(LanguageModelView::of(model, &state.settings.owned_by)))
}

/// An image generation model with its price (xAI's shape). `image_price` is xAI's unit for
/// images, USD cents per image.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ImageGenerationModelView {
    id: String,
    /// Changes when the model's serving or price change.
    fingerprint: String,
    created: i64,
    object: &'static str,
    owned_by: String,
    version: String,
    aliases: Vec<String>,
    input_modalities: Vec<&'static str>,
    output_modalities: Vec<&'static str>,
    image_price: i64,
}

impl ImageGenerationModelView {
    fn of(model: &ModelRoute, owned_by: &str) -> Self {
        let pricing = model.pricing.unwrap_or_default();
        Self {
            id: model.name.clone(),
            fingerprint: model.fingerprint(),
            created: model.created.timestamp(),
            object: "model",
            owned_by: owned_by.to_owned(),
            version: "1.0".into(),
            aliases: model.aliases.clone(),
            input_modalities: vec!["text"],
            output_modalities: vec!["image"],
            // Ticks to cents: exact, as the configuration is in whole cents.
            image_price: pricing.image.get() / (tollgate_domain::Ticks::PER_USD / 100),
        }
    }
}

/// `GET /v1/image-generation-models` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ImageGenerationModelsView {
    models: Vec<ImageGenerationModelView>,
}

/// The image generation models this key may use, with their prices per image.
#[utoipa::path(get, path = "/v1/image-generation-models", tag = "inference",
    responses((status = 200, body = ImageGenerationModelsView), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn list_image_generation_models(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
) -> Result<Json<ImageGenerationModelsView>, XaiError> {
    let owned_by = &state.settings.owned_by;
    Ok(Json(ImageGenerationModelsView {
        models: listed(&state, &key, Some(Endpoint::Image))?
            .map(|model| ImageGenerationModelView::of(model, owned_by))
            .collect(),
    }))
}

/// One image generation model (by name or alias), with its price per image.
#[utoipa::path(get, path = "/v1/image-generation-models/{model_id}", tag = "inference",
    params(("model_id" = String, Path, description = "A model's name or alias")),
    responses((status = 200, body = ImageGenerationModelView), (status = 401, body = crate::ErrorBody),
        (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn get_image_generation_model(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    Path(model_id): Path<String>,
) -> Result<Json<ImageGenerationModelView>, XaiError> {
    let model = one(&state, &key, &model_id, Some(Endpoint::Image))?;
    Ok(Json(ImageGenerationModelView::of(model, &state.settings.owned_by)))
}
