//! `xai_api.Models` (the models a key may use, by kind, with their prices) and
//! `xai_api.Tokenize`, as REST's `/v1/*-models` and `/v1/tokenize-text` answer them.

use std::sync::Arc;

use tollgate_domain::{Endpoint, ServerTool, Ticks};
use tollgate_gateway::ModelRoute;
use tonic::{Request, Response, Status};

use crate::Services;
use crate::auth::{api_key, timestamp};
use crate::proto::models_server::Models;
use crate::proto::tokenize_server::Tokenize;
use crate::proto::{
    EmbeddingModel, GetModelRequest, ImageGenerationModel, LanguageModel, ListEmbeddingModelsResponse,
    ListImageGenerationModelsResponse, ListLanguageModelsResponse, Modality, Token, TokenizeTextRequest,
    TokenizeTextResponse,
};

/// `xai_api.Models`.
pub(crate) struct ModelsService {
    services: Arc<Services>,
}

impl ModelsService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }

    /// The models serving `endpoint` that `request`'s key may list.
    async fn listed<T>(&self, request: &Request<T>, endpoint: Endpoint) -> Result<Vec<Arc<ModelRoute>>, Status> {
        let key = api_key(&self.services, request).await?;
        let listed = self
            .services
            .inference
            .listed_models(&key, Some(endpoint))
            .map_err(|error| crate::status::refused(&error))?;
        Ok(listed.cloned().collect())
    }

    /// One model serving `endpoint`, by name or alias, if the key may list it.
    async fn one(&self, request: &Request<GetModelRequest>, endpoint: Endpoint) -> Result<Arc<ModelRoute>, Status> {
        let key = api_key(&self.services, request).await?;
        self.services
            .inference
            .listed_model(&key, &request.get_ref().name, Some(endpoint))
            .cloned()
            .map_err(|error| crate::status::refused(&error))
    }
}

fn language(model: &ModelRoute) -> LanguageModel {
    let pricing = model.pricing.unwrap_or_default();
    LanguageModel {
        name: model.name.clone(),
        aliases: model.aliases.clone(),
        version: "1.0".into(),
        input_modalities: vec![Modality::Text as i32],
        output_modalities: vec![Modality::Text as i32],
        prompt_text_token_price: pricing.prompt.get(),
        prompt_image_token_price: pricing.prompt.get(),
        cached_prompt_token_price: pricing.cached_prompt.get(),
        completion_text_token_price: pricing.completion.get(),
        search_price: if model.server_tools.contains(&ServerTool::WebSearch) {
            pricing.web_search.get()
        } else {
            0
        },
        created: Some(timestamp(model.created)),
        max_prompt_length: 0,
        system_fingerprint: model.fingerprint(),
    }
}

fn embedding(model: &ModelRoute) -> EmbeddingModel {
    let pricing = model.pricing.unwrap_or_default();
    EmbeddingModel {
        name: model.name.clone(),
        aliases: model.aliases.clone(),
        version: "1.0".into(),
        input_modalities: vec![Modality::Text as i32],
        output_modalities: vec![Modality::Embedding as i32],
        prompt_text_token_price: pricing.prompt.get(),
        prompt_image_token_price: pricing.prompt.get(),
        created: Some(timestamp(model.created)),
        system_fingerprint: model.fingerprint(),
    }
}

fn image(model: &ModelRoute) -> ImageGenerationModel {
    let pricing = model.pricing.unwrap_or_default();
    ImageGenerationModel {
        name: model.name.clone(),
        aliases: model.aliases.clone(),
        version: "1.0".into(),
        input_modalities: vec![Modality::Text as i32],
        output_modalities: vec![Modality::Image as i32],
        // In cents, as REST shows it: exact, as the configuration is in whole cents.
        image_price: pricing.image.get() / (Ticks::PER_USD / 100),
        created: Some(timestamp(model.created)),
        max_prompt_length: 0,
        system_fingerprint: model.fingerprint(),
    }
}

#[tonic::async_trait]
impl Models for ModelsService {
    async fn list_language_models(&self, request: Request<()>) -> Result<Response<ListLanguageModelsResponse>, Status> {
        let models = self.listed(&request, Endpoint::Chat).await?;
        Ok(Response::new(ListLanguageModelsResponse {
            models: models.iter().map(|model| language(model)).collect(),
        }))
    }

    async fn list_embedding_models(
        &self,
        request: Request<()>,
    ) -> Result<Response<ListEmbeddingModelsResponse>, Status> {
        let models = self.listed(&request, Endpoint::Embeddings).await?;
        Ok(Response::new(ListEmbeddingModelsResponse {
            models: models.iter().map(|model| embedding(model)).collect(),
        }))
    }

    async fn list_image_generation_models(
        &self,
        request: Request<()>,
    ) -> Result<Response<ListImageGenerationModelsResponse>, Status> {
        let models = self.listed(&request, Endpoint::Image).await?;
        Ok(Response::new(ListImageGenerationModelsResponse {
            models: models.iter().map(|model| image(model)).collect(),
        }))
    }

    async fn get_language_model(&self, request: Request<GetModelRequest>) -> Result<Response<LanguageModel>, Status> {
        let model = self.one(&request, Endpoint::Chat).await?;
        Ok(Response::new(language(&model)))
    }

    async fn get_embedding_model(&self, request: Request<GetModelRequest>) -> Result<Response<EmbeddingModel>, Status> {
        let model = self.one(&request, Endpoint::Embeddings).await?;
        Ok(Response::new(embedding(&model)))
    }

    async fn get_image_generation_model(
        &self,
        request: Request<GetModelRequest>,
    ) -> Result<Response<ImageGenerationModel>, Status> {
        let model = self.one(&request, Endpoint::Image).await?;
        Ok(Response::new(image(&model)))
    }
}

/// The most text one request may tokenize, in bytes (as REST).
const MAX_TOKENIZE_BYTES: usize = 1 << 20;

/// `xai_api.Tokenize`.
pub(crate) struct TokenizeService {
    services: Arc<Services>,
}

impl TokenizeService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl Tokenize for TokenizeService {
    /// The text's tokens by the model's tokenizer (not charged; the `tokenize` endpoint ACL,
    /// model ACLs and request limits apply).
    async fn tokenize_text(
        &self,
        request: Request<TokenizeTextRequest>,
    ) -> Result<Response<TokenizeTextResponse>, Status> {
        let key = api_key(&self.services, &request).await?;
        let request = request.into_inner();
        if request.text.len() > MAX_TOKENIZE_BYTES {
            return Err(Status::invalid_argument(format!(
                "text may be at most {MAX_TOKENIZE_BYTES} bytes"
            )));
        }
        let (model, tokenizer) = self
            .services
            .inference
            .authorize_tokenize(&key, &request.model)
            .await
            .map_err(|error| {
                self.services.telemetry.refused(&error);
                crate::status::refused(&error)
            })?;
        let text = request.text;
        let tokens = tokio::task::spawn_blocking(move || tokenizer.tokenize(&text))
            .await
            .map_err(|_| Status::internal("tokenizing failed"))?;
        Ok(Response::new(TokenizeTextResponse {
            tokens: tokens
                .into_iter()
                .map(|token| Token {
                    token_id: token.id,
                    string_token: String::from_utf8_lossy(&token.bytes).into_owned(),
                    token_bytes: token.bytes,
                })
                .collect(),
            model,
        }))
    }
}
