//! `xai_api.Embedder` and `xai_api.Image`: translated into OpenAI's embeddings and image
//! generation requests, admitted, held and settled by the inference use case as REST's are.

use std::sync::Arc;

use serde_json::{Value, json};
use tollgate_domain::{Endpoint, TokenUsage};
use tollgate_gateway::usage::Demand;
use tonic::{Request, Response, Status};

use crate::proto::embedder_server::Embedder;
use crate::proto::image_server::Image;
use crate::proto::{
    EmbedEncodingFormat, EmbedRequest, EmbedResponse, Embedding, EmbeddingUsage, FeatureVector, GenerateImageRequest,
    GeneratedImage, ImageFormat, ImageQuality, ImageResponse, embed_input, generated_image,
};
use crate::{Services, auth, convert, status};

/// The most images one request may ask for (as REST).
const MAX_IMAGES: i32 = 10;

/// A request for another of the upstream's endpoints than chat.
struct Post<'a> {
    endpoint: Endpoint,
    /// The model asked for (name or alias).
    model: &'a str,
    demand: Demand,
    id: tollgate_domain::RequestId,
    /// The upstream's path.
    path: &'static str,
    /// OpenAI's request, but its model.
    body: Value,
}

/// Admits `post` and posts its body (its `model` set to the upstream's), settled with what
/// `read_usage` finds, in a task of its own (a client that goes away is still charged for what
/// was made): the answer, the public model name, usage and cost.
async fn post(
    services: &Arc<Services>,
    key: Arc<tollgate_domain::ApiKey>,
    post: Post<'_>,
    read_usage: impl FnOnce(&Value) -> (TokenUsage, bool) + Send + 'static,
) -> Result<(Value, String, TokenUsage, tollgate_domain::Ticks), Status> {
    let Post {
        endpoint,
        model,
        demand,
        id,
        path,
        mut body,
    } = post;
    let mut admission = services
        .inference
        .admit(key, endpoint, model, demand, false, id)
        .await
        .map_err(|error| {
            services.telemetry.refused(&error);
            status::refused(&error)
        })?;
    admission.keep_request(bytes::Bytes::from(body.to_string()));
    let public = admission.route().name.clone();
    body["model"] = json!(admission.route().upstream_model());
    let services = Arc::clone(services);
    let model = public.clone();
    let posted = tokio::spawn(async move {
        let telemetry = &services.telemetry;
        let posted = services
            .inference
            .post(
                admission,
                path,
                &body,
                &|event| telemetry.upstream_event(&event),
                read_usage,
            )
            .await;
        if let Ok(posted) = &posted {
            telemetry.charged(&model, &posted.usage, posted.charged);
        }
        posted
    })
    .await
    .map_err(|_| Status::internal("The request failed"))?
    .map_err(|error| status::unanswered(&error))?;
    Ok((posted.answer, public, posted.usage, posted.charged.cost))
}

/// `xai_api.Embedder`.
pub(crate) struct EmbedderService {
    services: Arc<Services>,
}

impl EmbedderService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl Embedder for EmbedderService {
    /// Text embeddings, priced per input token at the model's prompt price.
    async fn embed(&self, request: Request<EmbedRequest>) -> Result<Response<EmbedResponse>, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        let id = auth::request_id(&request);
        let request = request.into_inner();
        let texts = request
            .input
            .iter()
            .map(|input| match &input.input {
                Some(embed_input::Input::String(text)) => Ok(text.clone()),
                Some(embed_input::Input::ImageUrl(_)) => Err(Status::invalid_argument(
                    "image inputs are not offered here: embed text",
                )),
                None => Err(Status::invalid_argument("an input must be set")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if texts.is_empty() {
            return Err(Status::invalid_argument("input must not be empty"));
        }
        let base64 = EmbedEncodingFormat::try_from(request.encoding_format) == Ok(EmbedEncodingFormat::FormatBase64);
        let input = json!(texts);
        let demand = Demand::of_embeddings(&input);
        // Without upstream usage: about four bytes a token, as for chat.
        let estimate = demand.prompt_tokens.div_ceil(4);
        let mut body = json!({"input": input, "encoding_format": if base64 { "base64" } else { "float" }});
        if !request.user.is_empty() {
            body["user"] = json!(request.user);
        }
        let read_usage = move |answer: &Value| {
            let reported = answer["usage"]["prompt_tokens"].as_u64();
            let usage = TokenUsage {
                prompt_tokens: reported.unwrap_or(estimate),
                ..TokenUsage::default()
            };
            (usage, reported.is_none())
        };
        let request_to = Post {
            endpoint: Endpoint::Embeddings,
            model: &request.model,
            demand,
            id,
            path: "/embeddings",
            body,
        };
        let (answer, model, _usage, _cost) = post(&self.services, key, request_to, read_usage).await?;
        let embeddings = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(position, item)| {
                let vector = match &item["embedding"] {
                    Value::String(encoded) => FeatureVector {
                        float_array: Vec::new(),
                        base64_array: encoded.clone(),
                    },
                    Value::Array(values) => FeatureVector {
                        #[allow(clippy::cast_possible_truncation)]
                        float_array: values.iter().filter_map(Value::as_f64).map(|v| v as f32).collect(),
                        base64_array: String::new(),
                    },
                    _ => FeatureVector::default(),
                };
                Embedding {
                    index: item["index"]
                        .as_i64()
                        .and_then(|index| i32::try_from(index).ok())
                        .unwrap_or(i32::try_from(position).unwrap_or_default()),
                    embeddings: vec![vector],
                }
            })
            .collect();
        Ok(Response::new(EmbedResponse {
            id: answer["id"].as_str().unwrap_or_default().to_owned(),
            embeddings,
            usage: Some(EmbeddingUsage {
                num_text_embeddings: i32::try_from(texts.len()).unwrap_or(i32::MAX),
                num_image_embeddings: 0,
            }),
            model,
            system_fingerprint: String::new(),
        }))
    }
}

/// `xai_api.Image`.
pub(crate) struct ImageService {
    services: Arc<Services>,
}

impl ImageService {
    pub(crate) fn new(services: Arc<Services>) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl Image for ImageService {
    /// Images from a prompt, priced per image made at the model's `image_price`; every image
    /// asked for is held.
    async fn generate_image(&self, request: Request<GenerateImageRequest>) -> Result<Response<ImageResponse>, Status> {
        let key = auth::api_key(&self.services, &request).await?;
        let id = auth::request_id(&request);
        let request = request.into_inner();
        if request.prompt.trim().is_empty() {
            return Err(Status::invalid_argument("prompt must not be empty"));
        }
        if request.image.is_some() || !request.images.is_empty() {
            return Err(Status::invalid_argument(
                "image editing is not offered here: generate from a prompt",
            ));
        }
        let images = request.n.unwrap_or(1);
        if !(1..=MAX_IMAGES).contains(&images) {
            return Err(Status::invalid_argument(format!(
                "n must be between 1 and {MAX_IMAGES}"
            )));
        }
        // xAI's default is a URL.
        let base64 = ImageFormat::try_from(request.format) == Ok(ImageFormat::ImgFormatBase64);
        let mut body = json!({"prompt": request.prompt, "n": images,
            "response_format": if base64 { "b64_json" } else { "url" }});
        if let Some(quality) = request.quality {
            let quality = match ImageQuality::try_from(quality) {
                Ok(ImageQuality::ImgQualityLow) => Some("low"),
                Ok(ImageQuality::ImgQualityMedium) => Some("medium"),
                Ok(ImageQuality::ImgQualityHigh) => Some("high"),
                _ => None,
            };
            if let Some(quality) = quality {
                body["quality"] = json!(quality);
            }
        }
        if !request.user.is_empty() {
            body["user"] = json!(request.user);
        }
        let asked = u64::try_from(images).unwrap_or(1);
        // Charged for the images delivered (an upstream that made fewer is charged less).
        let read_usage = |answer: &Value| {
            let made = answer["data"].as_array().map_or(0, |data| data.len() as u64);
            let usage = TokenUsage {
                images: made,
                ..TokenUsage::default()
            };
            (usage, false)
        };
        let request_to = Post {
            endpoint: Endpoint::Image,
            model: &request.model,
            demand: Demand::of_images(&request.prompt, asked),
            id,
            path: "/images/generations",
            body,
        };
        let (answer, model, usage, cost) = post(&self.services, key, request_to, read_usage).await?;
        let images = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|item| GeneratedImage {
                image: match (item["b64_json"].as_str(), item["url"].as_str()) {
                    // The SDK reads a data URL.
                    (Some(encoded), _) => Some(generated_image::Image::Base64(format!(
                        "data:image/png;base64,{encoded}"
                    ))),
                    (None, Some(url)) => Some(generated_image::Image::Url(url.to_owned())),
                    (None, None) => None,
                },
                respect_moderation: true,
                ..GeneratedImage::default()
            })
            .collect();
        Ok(Response::new(ImageResponse {
            images,
            model,
            usage: Some(convert::usage(&usage, cost)),
        }))
    }
}
