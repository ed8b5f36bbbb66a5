//! `POST /v1/images/generations`: OpenAI's image generation, priced per image made (xAI's
//! `usage.cost_in_usd_ticks`), held for every image asked for before the upstream is called.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tollgate_domain::{Endpoint, TokenUsage};
use tollgate_gateway::usage::Demand;

use super::{Billing, admission_refused, in_own_task, post_and_settle, rate_limit_headers, request_id};
use crate::AppState;
use crate::error::XaiError;
use crate::extract::{ApiKeyAuth, RawJson, RequestMeta};

/// The most images one request may ask for (xAI's and OpenAI's bound).
const MAX_IMAGES: u64 = 10;

/// `POST /v1/images/generations` body: OpenAI's. `model`, `prompt` and `n` are read; every
/// other field (`response_format`, `size`, `quality`, `user`, …) goes to the upstream untouched.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct ImageGenerationRequest {
    /// The model (name or alias).
    model: String,
    /// What to draw.
    prompt: String,
    /// How many images (1 to 10; default 1).
    #[serde(default)]
    n: Option<u64>,
    /// Everything else.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    extra: serde_json::Map<String, Value>,
}

/// Generate images, priced per image made at the model's `image_price`. The model's upstream
/// must serve images (`image` among its configured endpoints), else 400.
#[utoipa::path(post, path = "/v1/images/generations", tag = "inference", request_body = ImageGenerationRequest,
    responses((status = 200, description = "OpenAI's images answer (`data[]` of `url` or `b64_json`), with `usage.cost_in_usd_ticks`", body = Object),
        (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody),
        (status = 404, body = crate::ErrorBody), (status = 429, body = crate::ErrorBody), (status = 502, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody)),
    security(("api_key" = [])))]
pub(crate) async fn create_image(
    State(state): State<AppState>,
    ApiKeyAuth(key): ApiKeyAuth,
    RequestMeta(meta): RequestMeta,
    RawJson(body, raw): RawJson<ImageGenerationRequest>,
) -> Result<Response, XaiError> {
    if body.prompt.trim().is_empty() {
        return Err(XaiError::invalid_argument("prompt must not be empty"));
    }
    let images = body.n.unwrap_or(1);
    if !(1..=MAX_IMAGES).contains(&images) {
        return Err(XaiError::invalid_argument(format!(
            "n must be between 1 and {MAX_IMAGES}"
        )));
    }
    let demand = Demand::of_images(&body.prompt, images);
    let mut admission = state
        .inference
        .admit(key, Endpoint::Image, &body.model, demand, false, request_id(&meta))
        .await
        .map_err(|error| admission_refused(&state, error))?;
    admission.keep_request(raw);
    let rate_headers = rate_limit_headers(admission.limits());
    let public_name = admission.route().name.clone();
    let upstream_model = admission.route().upstream_model().to_owned();
    let billing = Billing {
        admission,
        state: state.clone(),
    };
    let mut upstream_body = body.extra;
    upstream_body.insert("model".into(), Value::String(upstream_model));
    upstream_body.insert("prompt".into(), Value::String(body.prompt));
    upstream_body.insert("n".into(), Value::from(images));
    let upstream_body = Value::Object(upstream_body);
    let answer = in_own_task(async move {
        // Charged for the images delivered (an upstream that made fewer is charged less).
        let read_usage = |answer: &Value| {
            let made = answer["data"].as_array().map_or(0, |data| data.len() as u64);
            let usage = TokenUsage {
                images: made,
                ..TokenUsage::default()
            };
            (usage, false)
        };
        let (mut answer, _usage, cost) =
            post_and_settle(&state, billing, "/images/generations", &upstream_body, read_usage).await?;
        if answer.get("model").is_some() {
            answer["model"] = Value::String(public_name);
        }
        answer["usage"] = json!({ "cost_in_usd_ticks": cost.get() });
        Ok(answer)
    })
    .await?;
    Ok((rate_headers, Json(answer)).into_response())
}
