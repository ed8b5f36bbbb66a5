//! Machine-to-machine callbacks, authenticated by signatures: GitHub's secret scanning reports.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use tollgate_core::{Feedback, ScanError};

use crate::AppState;
use crate::error::XaiError;
use crate::extract::RequestMeta;

pub(crate) fn router() -> Router<AppState> {
    Router::new().route("/webhooks/github/secret-scanning", post(github_secret_scanning))
}

impl From<ScanError> for XaiError {
    fn from(error: ScanError) -> Self {
        match error {
            ScanError::Unsigned | ScanError::BadSignature => XaiError::unauthenticated(error.to_string()),
            ScanError::InvalidBody(_) => XaiError::invalid_argument(error.to_string()),
            ScanError::KeysUnavailable(_) => {
                XaiError::unavailable("GitHub's signing keys cannot be fetched; retry later", error)
            }
            ScanError::Key(key) => key.into(),
        }
    }
}

/// One verdict, as GitHub reads it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct FeedbackView {
    /// SHA-256 of the reported token, hex (the token itself is never echoed).
    token_hash: String,
    /// The type GitHub sent.
    token_type: String,
    /// `true_positive` (one of our keys, now blocked or revoked) or `false_positive`.
    label: &'static str,
}

impl From<Feedback> for FeedbackView {
    fn from(feedback: Feedback) -> Self {
        Self {
            token_hash: feedback.token_hash,
            token_type: feedback.token_type,
            label: feedback.label,
        }
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// GitHub secret scanning partner endpoint. The body is GitHub's JSON array of matches
/// (`token`, `type`, `url`, `source`), signed with ECDSA P-256 over the raw bytes. Every API key
/// of ours among the tokens is blocked (management keys revoked) and the team's Admins are
/// emailed. Unsigned or badly signed requests get 401 and change nothing.
#[utoipa::path(post, path = "/webhooks/github/secret-scanning", tag = "webhooks",
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "Which of GitHub's keys signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256 SHA-256 signature of the raw body"),
    ),
    request_body(content = Vec<serde_json::Value>, description = "GitHub's matches"),
    responses(
        (status = 200, body = Vec<FeedbackView>),
        (status = 400, body = crate::ErrorBody),
        (status = 401, body = crate::ErrorBody),
        (status = 503, body = crate::ErrorBody),
    ))]
pub(crate) async fn github_secret_scanning(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    crate::extract::XaiBytes(body): crate::extract::XaiBytes,
) -> Result<Json<Vec<FeedbackView>>, XaiError> {
    let feedback = state
        .secret_scanning
        .report(
            header(&headers, "github-public-key-identifier"),
            header(&headers, "github-public-key-signature"),
            &body,
            &meta,
        )
        .await?;
    Ok(Json(feedback.into_iter().map(FeedbackView::from).collect()))
}
