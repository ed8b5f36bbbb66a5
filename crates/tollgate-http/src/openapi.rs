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
        crate::console::sign_up,
        crate::console::sign_in,
        crate::console::sign_in_second_factor,
        crate::console::change_password,
        crate::console::remove_password,
        crate::console::update_account,
        crate::console::list_passkeys,
        crate::console::add_passkey,
        crate::console::begin_passkey_registration,
        crate::console::passkey_challenge,
        crate::console::sign_in_passkey_challenge,
        crate::console::remove_passkey,
        crate::console::reset_passkey_challenge,
        crate::console::delete_account,
        crate::console::list_providers,
        crate::console::oidc_start,
        crate::console::oidc_callback,
        crate::console::oidc_complete,
        crate::console::list_identities,
        crate::console::link_pending_identity,
        crate::console::unlink_identity,
        crate::console::start_linking,
        crate::console::restore_account,
        crate::console::request_email_change,
        crate::console::confirm_email_change,
        crate::console::report_email_change,
        crate::console::mfa_status,
        crate::console::begin_totp,
        crate::console::confirm_totp,
        crate::console::disable_mfa,
        crate::console::regenerate_recovery_codes,
        crate::console::sign_out,
        crate::console::verify_email,
        crate::console::resend_verification,
        crate::console::request_password_reset,
        crate::console::reset_password,
        crate::console::me,
        crate::console::list_sessions,
        crate::console::end_session,
        crate::console::end_other_sessions,
        crate::console::create_team,
        crate::console::get_team,
        crate::console::update_team,
        crate::console::delete_team,
        crate::console::team_members,
        crate::console::add_team_member,
        crate::console::change_member_role,
        crate::console::remove_team_member,
        crate::console::team_invitations,
        crate::console::revoke_team_invitation,
        crate::console::accept_invitation,
        crate::console::team_domains,
        crate::console::add_team_domain,
        crate::console::verify_team_domain,
        crate::console::remove_team_domain,
        crate::console::team_audit_events,
        crate::console::team_audit_export,
        crate::console::team_api_keys,
        crate::console::team_create_api_key,
        crate::console::team_data_use,
        crate::console::team_set_data_use,
        crate::console::team_key_policy,
        crate::console::my_invitations,
        crate::console::accept_my_invitation,
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
        crate::console::team_set_key_policy,
        crate::console::team_get_api_key,
        crate::console::team_update_api_key,
        crate::console::team_delete_api_key,
        crate::console::team_rotate_api_key,
        crate::console::team_management_keys,
        crate::console::team_create_management_key,
        crate::console::team_revoke_management_key,
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
