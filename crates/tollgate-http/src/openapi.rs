//! The OpenAPI document, generated from the handlers' annotations and the view types. A test
//! compares it with the committed `openapi.json` at the repository root, so the published
//! contract never drifts silently (`UPDATE_SNAPSHOTS=1` rewrites it).

use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// The chat completion request, documented (the handler forwards unknown fields as-is).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionRequestDoc {
    /// Model name or alias.
    pub model: String,
    /// The conversation: `{"role": "system"|"developer"|"user"|"assistant"|"tool", "content": …}`.
    pub messages: Vec<serde_json::Value>,
    /// Stream server-sent events; the stream ends with `data: [DONE]`.
    pub stream: Option<bool>,
    /// Output token budget.
    pub max_tokens: Option<u32>,
    /// Output token budget (newer name).
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature; forwarded with every other OpenAI/xAI parameter.
    pub temperature: Option<f64>,
}

/// Token usage and its exact cost.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageDoc {
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Completion tokens, reasoning excluded.
    pub completion_tokens: u64,
    /// Prompt + completion + reasoning.
    pub total_tokens: u64,
    /// `{text_tokens, audio_tokens, image_tokens, cached_tokens}`.
    pub prompt_tokens_details: serde_json::Value,
    /// `{reasoning_tokens, audio_tokens, accepted_prediction_tokens, rejected_prediction_tokens}`.
    pub completion_tokens_details: serde_json::Value,
    /// Live-search sources used.
    pub num_sources_used: u64,
    /// Cost in USD ticks (1e-10 USD).
    pub cost_in_usd_ticks: i64,
}

/// A chat completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionDoc {
    /// Id.
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    /// The resolved model name.
    pub model: String,
    /// Choices: `{index, message, finish_reason}`.
    pub choices: Vec<serde_json::Value>,
    /// Usage and cost.
    pub usage: UsageDoc,
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme("api_key", bearer("An inference API key"));
        components.add_security_scheme("management_key", bearer("A team's management key"));
        components.add_security_scheme(
            "metrics_token",
            bearer("The operator's metrics_token (configuration), for /metrics on the public listener"),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    "__Host-tollgate_session",
                    "The console session (`tollgate_session` when not served over HTTPS); state changes also need X-CSRF-Token",
                ),
            )),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tollgate", description = "Self-hosted developer platform for an LLM API, wire-compatible with xAI's API."),
    paths(
        crate::v1::create_chat_completion,
        crate::v1::responses::create_response,
        crate::v1::responses::get_response,
        crate::v1::responses::delete_response,
        crate::v1::completions::create_completion,
        crate::v1::deferred::get_deferred_completion,
        crate::v1::create_embeddings,
        crate::v1::images::create_image,
        crate::v1::tokenize_text,
        crate::v1::models::list_models,
        crate::v1::models::get_model,
        crate::v1::models::list_language_models,
        crate::v1::models::get_language_model,
        crate::v1::models::list_embedding_models,
        crate::v1::models::get_embedding_model,
        crate::v1::models::list_image_generation_models,
        crate::v1::models::get_image_generation_model,
        crate::v1::get_api_key,
        crate::management::create_api_key,
        crate::management::list_api_keys,
        crate::management::get_api_key,
        crate::management::update_api_key,
        crate::management::delete_api_key,
        crate::management::rotate_api_key,
        crate::management::key_propagation,
        crate::management::list_endpoints,
        crate::management::list_acl_models,
        crate::management::validate_management_key,
        crate::audit::list_events,
        crate::audit::export_events,
        crate::webhooks::github_secret_scanning,
        crate::api::sign_up,
        crate::api::sign_in,
        crate::api::sign_in_second_factor,
        crate::api::change_password,
        crate::api::remove_password,
        crate::api::update_account,
        crate::api::list_passkeys,
        crate::api::add_passkey,
        crate::api::begin_passkey_registration,
        crate::api::passkey_challenge,
        crate::api::sign_in_passkey_challenge,
        crate::api::remove_passkey,
        crate::api::reset_passkey_challenge,
        crate::api::delete_account,
        crate::api::list_providers,
        crate::api::oidc_start,
        crate::api::oidc_callback,
        crate::api::oidc_complete,
        crate::api::list_identities,
        crate::api::link_pending_identity,
        crate::api::unlink_identity,
        crate::api::start_linking,
        crate::api::restore_account,
        crate::api::request_email_change,
        crate::api::confirm_email_change,
        crate::api::report_email_change,
        crate::api::mfa_status,
        crate::api::begin_totp,
        crate::api::confirm_totp,
        crate::api::disable_mfa,
        crate::api::regenerate_recovery_codes,
        crate::api::sign_out,
        crate::api::verify_email,
        crate::api::resend_verification,
        crate::api::request_password_reset,
        crate::api::reset_password,
        crate::api::me,
        crate::api::list_sessions,
        crate::api::end_session,
        crate::api::end_other_sessions,
        crate::api::create_team,
        crate::api::get_team,
        crate::api::update_team,
        crate::api::delete_team,
        crate::api::team_members,
        crate::api::add_team_member,
        crate::api::change_member_role,
        crate::api::remove_team_member,
        crate::api::team_invitations,
        crate::api::revoke_team_invitation,
        crate::api::accept_invitation,
        crate::api::team_domains,
        crate::api::add_team_domain,
        crate::api::verify_team_domain,
        crate::api::remove_team_domain,
        crate::api::team_audit_events,
        crate::api::team_audit_export,
        crate::api::team_api_keys,
        crate::api::team_create_api_key,
        crate::api::team_data_use,
        crate::api::team_set_data_use,
        crate::api::team_key_policy,
        crate::api::my_invitations,
        crate::api::accept_my_invitation,
        crate::billing::prepaid_balance,
        crate::billing::team_prepaid_balance,
        crate::billing::spending_limits,
        crate::billing::set_spending_limit,
        crate::billing::team_spending_limits,
        crate::billing::team_set_spending_limit,
        crate::billing::invoice_preview,
        crate::billing::team_invoice_preview,
        crate::billing::usage,
        crate::billing::team_usage,
        crate::payments::top_up,
        crate::payments::team_top_up,
        crate::payments::billing_info,
        crate::payments::set_billing_info,
        crate::payments::team_billing_info,
        crate::payments::team_set_billing_info,
        crate::payments::payment_methods,
        crate::payments::team_payment_methods,
        crate::payments::set_default_payment_method,
        crate::payments::team_set_default_payment_method,
        crate::payments::invoices,
        crate::payments::team_invoices,
        crate::payments::team_invoice_page,
        crate::payments::team_pay_invoice,
        crate::payments::billing_settings,
        crate::payments::set_billing_settings,
        crate::payments::team_billing_settings,
        crate::payments::team_set_billing_settings,
        crate::payments::team_checkout,
        crate::payments::team_add_payment_method,
        crate::payments::invoice_pdf,
        crate::payments::team_invoice_pdf,
        crate::payments::stripe_webhook,
        crate::api::team_set_key_policy,
        crate::api::team_get_api_key,
        crate::api::team_update_api_key,
        crate::api::team_delete_api_key,
        crate::api::team_rotate_api_key,
        crate::api::team_management_keys,
        crate::api::team_create_management_key,
        crate::api::team_revoke_management_key,
        crate::ops::healthz,
        crate::ops::readyz,
        crate::ops::public_metrics,
        crate::ops::openapi,
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "inference", description = "xAI-compatible inference API (API key)"),
        (name = "management", description = "xAI-compatible Management API (management key)"),
        (name = "console", description = "The console's JSON API (session cookie; X-CSRF-Token on changes)"),
        (name = "webhooks", description = "Signed callbacks: GitHub secret scanning"),
        (name = "operations", description = "Probes, metrics and this document"),
    )
)]
struct ApiDoc;

/// The OpenAPI document.
#[must_use]
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The version is the contract's, not the crate's: keep the snapshot stable across releases.
    doc.info.version = "1".to_owned();
    doc
}

/// The OpenAPI document as pretty JSON.
#[must_use]
pub fn document_json() -> String {
    document().to_pretty_json().unwrap_or_else(|_| "{}".to_owned())
}
