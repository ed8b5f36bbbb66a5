//! The Tokenizer page: pick a model, paste text, see its tokens highlighted and counted (the
//! model's own tokenizer, as `/v1/tokenize-text` uses; nothing is charged). A request is billed
//! for more tokens than this shows: the model's chat template adds its own.

use super::*;

/// The most text the page tokenizes, in bytes (the API takes 1 MiB; a page of highlighted
/// tokens that long is no use to read).
const MAX_BYTES: usize = 100_000;
/// The most tokens highlighted; the count covers them all.
const MAX_SHOWN: usize = 5_000;

struct TokenSpan {
    id: u32,
    text: String,
    /// One of five shades, so neighbours differ.
    shade: usize,
}

#[derive(Template)]
#[template(path = "tokenizer.html")]
struct TokenizerPage {
    frame: Frame,
    models: Vec<String>,
    model: String,
    text: String,
    tokens: Option<Vec<TokenSpan>>,
    count: usize,
    characters: usize,
    truncated: bool,
    error: Option<String>,
}

impl std::ops::Deref for TokenizerPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/console/tokenizer`.
pub(super) async fn tokenizer(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let context = match context(&state, &headers, query.team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let models: Vec<String> = state.inference.tokenizable_models().map(str::to_owned).collect();
    let page = TokenizerPage {
        frame: context.frame(&state, "/console/tokenizer"),
        model: models.first().cloned().unwrap_or_default(),
        models,
        text: String::new(),
        tokens: None,
        count: 0,
        characters: 0,
        truncated: false,
        error: None,
    };
    console_page(&state, context.team_id, &page)
}

#[derive(Deserialize)]
pub(super) struct TokenizeForm {
    #[serde(default)]
    model: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Tokenizes the text with the model's tokenizer.
pub(super) async fn tokenize(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TokenizeForm>,
) -> Response {
    if let Err(error) = acting(&state, &headers, form.csrf.as_deref()).await {
        return error_page(failure(error));
    }
    let context = match context(&state, &headers, None).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let models: Vec<String> = state.inference.tokenizable_models().map(str::to_owned).collect();
    let mut page = TokenizerPage {
        frame: context.frame(&state, "/console/tokenizer"),
        models,
        model: form.model.clone(),
        characters: form.text.chars().count(),
        text: form.text,
        tokens: None,
        count: 0,
        truncated: false,
        error: None,
    };
    let mut status = StatusCode::OK;
    if page.text.len() > MAX_BYTES {
        status = StatusCode::BAD_REQUEST;
        page.error = Some(format!(
            "The text is {} bytes; the Tokenizer takes at most {MAX_BYTES} (the API's /v1/tokenize-text takes more).",
            page.text.len()
        ));
    } else {
        match state.inference.console_tokenizer(&form.model) {
            Ok((name, tokenizer)) => {
                page.model = name;
                let text = page.text.clone();
                match tokio::task::spawn_blocking(move || tokenizer.tokenize(&text)).await {
                    Ok(tokens) => {
                        page.count = tokens.len();
                        page.truncated = tokens.len() > MAX_SHOWN;
                        page.tokens = Some(
                            tokens
                                .into_iter()
                                .take(MAX_SHOWN)
                                .enumerate()
                                .map(|(n, token)| TokenSpan {
                                    id: token.id,
                                    text: String::from_utf8_lossy(&token.bytes).into_owned(),
                                    shade: n % 5,
                                })
                                .collect(),
                        );
                    }
                    Err(error) => {
                        tracing::error!(%error, "tokenizing failed");
                        return error_page((StatusCode::INTERNAL_SERVER_ERROR, "Tokenizing failed".into()));
                    }
                }
            }
            Err(error) => {
                status = match error {
                    tollgate_core::AdmitError::UnknownModel(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::BAD_REQUEST,
                };
                page.error = Some(error.client_message());
            }
        }
    }
    let mut response = console_page(&state, context.team_id, &page);
    *response.status_mut() = status;
    response
}
