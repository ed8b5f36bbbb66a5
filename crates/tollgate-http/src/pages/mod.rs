//! The web console's pages: server-rendered HTML (askama templates compiled into the binary),
//! enhanced with htmx (vendored, served from `/assets/` with Subresource Integrity). They call
//! the same services as the console's JSON API (`api`); nothing here holds a rule of its
//! own.
//!
//! Sessions are the JSON API's: the HttpOnly session cookie. A page's forms and htmx requests
//! that change state carry the session's CSRF token, which the browser holds in a second
//! HttpOnly, `SameSite=Strict` cookie set at sign-in: the server reads it when it renders a page
//! and writes it into the page (the `X-CSRF-Token` header htmx sends, a hidden field in plain
//! forms), and the service checks it against the session's hash as for the JSON API.

use std::sync::LazyLock;

use askama::Template;
use axum::Form;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tollgate_core::accounts::{AccountError, SecondFactor, SignInOutcome, SignedIn};
use tollgate_core::{ApiKeyChanges, Federated, FederationError, KeyError, NewApiKey};
use tollgate_domain::{ApiKey, ApiKeyId, InvitationId, Permission, Role, Session, TeamId, User, UserId};

mod account;
mod audit;
mod auth;
mod billing;
mod invitations;
mod key;
mod keys;
mod links;
mod management_keys;
mod operator;
mod sessions;
mod settings;
mod teams;
mod tokenizer;
mod usage;
mod users;

use account::{
    account, add_passkey, begin_passkey, begin_totp, change_email, change_password, confirm_totp, delete_account,
    disable_totp, link, remove_passkey, remove_password, rename, renew_recovery_codes, unlink,
};
use audit::audit_log;
use auth::{
    account_with_address, restore, second_factor, separate_account, sign_in, sign_in_and_link, sign_in_page, sign_out,
    sign_up, sign_up_page,
};
pub(crate) use auth::{federated, wants_html};
use billing::{add_method, billing, buy, default_method, pay_invoice, set_details, set_limit, set_settings};
use invitations::{accept, accept_waiting, invitations};
use key::{key, rotate_key, update_key};
use keys::{change_key, console, create_key};
use links::{
    confirm_email_change, confirm_email_change_page, forgot_password, forgot_password_page, report_email_change,
    report_email_change_page, reset_password, reset_password_page, verify_email, verify_email_page,
};
use management_keys::{create_management_key, management_keys, revoke_management_key};
use operator::{block_key, block_team, grant, limit, operator, operator_team, tier, zero_retention};
use sessions::{end_other_sessions, end_session, sessions};
use settings::{add_domain, change_domain, delete_team, settings, update_team};
use teams::{create_team, new_team_page};
use tokenizer::{tokenize, tokenizer};
use usage::usage;
use users::{change_role, invite, remove_member, users, withdraw_invitation};

use crate::AppState;
use crate::extract::RequestMeta;

/// The vendored htmx, its URL (versioned, so it is cached for good) and its SRI hash.
const HTMX: &[u8] = include_bytes!("../../assets/htmx-2.0.4.min.js");
const HTMX_PATH: &str = "/assets/htmx-2.0.4.min.js";
static HTMX_INTEGRITY: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(HTMX))
    )
});

/// A file of ours served from `/assets/` under a name carrying its hash (so it is cached for
/// good and a new build's is fetched anew), with its Subresource Integrity hash.
struct Asset {
    path: String,
    integrity: String,
    body: &'static [u8],
    content_type: &'static str,
}

impl Asset {
    fn new(stem: &str, extension: &str, body: &'static [u8], content_type: &'static str) -> Self {
        use base64::Engine as _;
        use sha2::Digest as _;
        let digest = sha2::Sha384::digest(body);
        Self {
            path: format!("/assets/{stem}-{}.{extension}", hex::encode(&digest[..6])),
            integrity: format!("sha384-{}", base64::engine::general_purpose::STANDARD.encode(digest)),
            body,
            content_type,
        }
    }

    fn response(&self) -> Response {
        (
            [
                (header::CONTENT_TYPE, self.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            self.body,
        )
            .into_response()
    }
}

/// The console's stylesheet and its few scripts (the pages' CSP allows nothing inline).
static CONSOLE_CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "css",
        include_bytes!("../../assets/console.css"),
        "text/css; charset=utf-8",
    )
});
static CONSOLE_JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "js",
        include_bytes!("../../assets/console.js"),
        "text/javascript; charset=utf-8",
    )
});

/// The pages' Content-Security-Policy: scripts and styles only from these files of ours (no
/// inline script or style, no eval), nothing framed, forms sent only here.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The security headers every page and asset is answered with. The referrer goes to this
/// server only: with `no-referrer` a browser sends `Origin: null` on form posts, which the
/// login-CSRF check must refuse.
async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.entry(name).or_insert(HeaderValue::from_static(value));
    }
    response
}

/// The cookie holding the session's CSRF token for the pages.
const CSRF_COOKIE: &str = "tollgate_csrf";
/// The cookie remembering the team the console shows.
const TEAM_COOKIE: &str = "tollgate_team";

pub(crate) fn router() -> Router<AppState> {
    let guarded = || axum::middleware::from_fn(same_origin);
    Router::new()
        .route("/", get(home))
        .route("/sign-in", get(sign_in_page).post(sign_in).layer(guarded()))
        .route("/sign-in/second-factor", post(second_factor).layer(guarded()))
        .route("/sign-up", get(sign_up_page).post(sign_up).layer(guarded()))
        .route("/sign-in/link", post(sign_in_and_link).layer(guarded()))
        .route("/sign-up/separate", post(separate_account).layer(guarded()))
        .route("/sign-up/address", post(account_with_address).layer(guarded()))
        .route("/sign-out", post(sign_out).layer(guarded()))
        .route(
            "/verify-email",
            get(verify_email_page).post(verify_email).layer(guarded()),
        )
        .route(
            "/forgot-password",
            get(forgot_password_page).post(forgot_password).layer(guarded()),
        )
        .route(
            "/reset-password",
            get(reset_password_page).post(reset_password).layer(guarded()),
        )
        .route(
            "/confirm-email-change",
            get(confirm_email_change_page)
                .post(confirm_email_change)
                .layer(guarded()),
        )
        .route(
            "/report-email-change",
            get(report_email_change_page).post(report_email_change).layer(guarded()),
        )
        .route("/restore", post(restore).layer(guarded()))
        .route("/account", get(account))
        .route("/account/name", post(rename))
        .route("/account/email", post(change_email))
        .route("/account/password", post(change_password))
        .route("/account/password/remove", post(remove_password))
        .route("/account/identities/{identity_id}/remove", post(unlink))
        .route("/account/identities/{provider}/link", post(link))
        .route("/account/totp", post(begin_totp))
        .route("/account/totp/confirm", post(confirm_totp))
        .route("/account/totp/disable", post(disable_totp))
        .route("/account/recovery-codes", post(renew_recovery_codes))
        .route("/account/passkeys", post(add_passkey))
        .route("/account/passkeys/register", post(begin_passkey))
        .route("/account/passkeys/{passkey_id}/remove", post(remove_passkey))
        .route("/account/delete", post(delete_account))
        .route("/accept-invitation", get(invitations).post(accept))
        .route("/invitations/{invitation_id}/accept", post(accept_waiting))
        .route("/sessions", get(sessions))
        .route("/sessions/end-others", post(end_other_sessions))
        .route("/sessions/{session_id}/end", post(end_session))
        .route("/console", get(console))
        .route("/console/teams/new", get(new_team_page))
        .route("/console/teams", post(create_team))
        .route("/console/settings", get(settings))
        .route("/console/teams/{team_id}/settings", post(update_team))
        .route("/console/teams/{team_id}/domains", post(add_domain))
        .route(
            "/console/teams/{team_id}/domains/{domain_id}/{action}",
            post(change_domain),
        )
        .route("/console/teams/{team_id}/delete", post(delete_team))
        .route("/console/billing", get(billing))
        .route("/console/teams/{team_id}/billing/limit", post(set_limit))
        .route("/console/teams/{team_id}/billing/buy", post(buy))
        .route("/console/teams/{team_id}/billing/payment-methods", post(add_method))
        .route(
            "/console/teams/{team_id}/billing/payment-methods/{method_id}/default",
            post(default_method),
        )
        .route("/console/teams/{team_id}/billing/settings", post(set_settings))
        .route("/console/teams/{team_id}/billing/details", post(set_details))
        .route(
            "/console/teams/{team_id}/billing/invoices/{invoice_id}/pay",
            post(pay_invoice),
        )
        .route("/console/management-keys", get(management_keys))
        .route("/console/teams/{team_id}/management-keys", post(create_management_key))
        .route(
            "/console/teams/{team_id}/management-keys/{key_id}/revoke",
            post(revoke_management_key),
        )
        .route("/operator", get(operator))
        .route("/operator/teams/{team_id}", get(operator_team))
        .route("/operator/teams/{team_id}/grant", post(grant))
        .route("/operator/teams/{team_id}/limit", post(limit))
        .route("/operator/teams/{team_id}/tier", post(tier))
        .route("/operator/teams/{team_id}/zero-retention", post(zero_retention))
        .route("/operator/teams/{team_id}/keys/{key_id}/block", post(block_key))
        .route("/operator/teams/{team_id}/block", post(block_team))
        .route("/console/usage", get(usage))
        .route("/console/tokenizer", get(tokenizer).post(tokenize))
        .route("/console/users", get(users))
        .route("/console/audit", get(audit_log))
        .route("/console/teams/{team_id}/users", post(invite))
        .route("/console/teams/{team_id}/users/{user_id}/remove", post(remove_member))
        .route("/console/teams/{team_id}/users/{user_id}/role", post(change_role))
        .route(
            "/console/teams/{team_id}/invitations/{invitation_id}/revoke",
            post(withdraw_invitation),
        )
        .route("/console/teams/{team_id}/api-keys", post(create_key))
        .route("/console/api-keys/{key_id}", get(key))
        .route("/console/teams/{team_id}/api-keys/{key_id}/settings", post(update_key))
        .route("/console/teams/{team_id}/api-keys/{key_id}/rotate", post(rotate_key))
        .route("/console/teams/{team_id}/api-keys/{key_id}/{action}", post(change_key))
        .route(HTMX_PATH, get(htmx))
        .route(CONSOLE_CSS.path.as_str(), get(|| async { CONSOLE_CSS.response() }))
        .route(CONSOLE_JS.path.as_str(), get(|| async { CONSOLE_JS.response() }))
        .layer(axum::middleware::from_fn(security_headers))
}

/// Forms that sign in or create accounts carry no session's CSRF token (there is none yet), so
/// a browser's `Origin` must be this server (no other site may sign a person in to an account
/// of its choosing); a request without one (not a browser's) passes.
async fn same_origin(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = request.headers();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if host != Some(authority) {
            return (
                StatusCode::FORBIDDEN,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "This form was sent from another site.",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// What every page's layout needs.
struct Layout {
    product: String,
    htmx_url: &'static str,
    htmx_integrity: &'static str,
    css_url: &'static str,
    css_integrity: &'static str,
    js_url: &'static str,
    js_integrity: &'static str,
    csrf: String,
}

impl Layout {
    fn new(state: &AppState, csrf: String) -> Self {
        Self {
            product: state.settings.owned_by.clone(),
            htmx_url: HTMX_PATH,
            htmx_integrity: HTMX_INTEGRITY.as_str(),
            css_url: CONSOLE_CSS.path.as_str(),
            css_integrity: CONSOLE_CSS.integrity.as_str(),
            js_url: CONSOLE_JS.path.as_str(),
            js_integrity: CONSOLE_JS.integrity.as_str(),
            csrf,
        }
    }
}

/// A rendered page or fragment, with `status`; never cached (pages show account data).
fn html(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "a page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "The page could not be rendered").into_response()
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

fn set_cookie(state: &AppState, name: &str, value: &str, max_age: i64, same_site: &str) -> HeaderValue {
    let secure = if state.cookies.secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{name}={value}; Path=/; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in person of a page request, and the CSRF token to write into the page.
struct Visitor {
    session: Session,
    user: User,
    csrf: String,
}

/// The page request's session (reading, so no CSRF check); `None` when signed out.
async fn visitor(state: &AppState, headers: &HeaderMap) -> Option<Visitor> {
    let token = state.cookies.read(headers)?;
    let (session, user) = state.accounts.authenticate(token, None, false).await.ok()?;
    Some(Visitor {
        session,
        user,
        csrf: cookie(headers, CSRF_COOKIE).unwrap_or_default(),
    })
}

/// A request that changes state: its session, with the CSRF token it presents (htmx's header,
/// or a plain form's field) checked.
async fn acting(state: &AppState, headers: &HeaderMap, form_csrf: Option<&str>) -> Result<Visitor, AccountError> {
    let token = state.cookies.read(headers).ok_or(AccountError::NotSignedIn)?;
    let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).or(form_csrf);
    let (session, user) = state.accounts.authenticate(token, csrf, true).await?;
    Ok(Visitor {
        session,
        user,
        csrf: csrf.unwrap_or_default().to_owned(),
    })
}

/// `/`: the console when signed in, else the sign-in page.
async fn home(State(state): State<AppState>, headers: HeaderMap) -> Redirect {
    if visitor(&state, &headers).await.is_some() {
        Redirect::to("/console")
    } else {
        Redirect::to("/sign-in")
    }
}

/// A typed second-factor code: six digits are an authenticator's code; anything else is tried
/// as a recovery code.
fn second_factor_of(code: &str) -> SecondFactor {
    if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        SecondFactor::Totp(code.to_owned())
    } else {
        SecondFactor::RecoveryCode(code.to_owned())
    }
}

/// What a page says for a failure, and with which status: the JSON API's mapping, so both
/// surfaces answer alike.
fn failure(error: impl Into<crate::error::XaiError>) -> (StatusCode, String) {
    let error = error.into();
    (error.status(), error.body().error.clone())
}

/// What a page shows after a change: a notice, or what went wrong and next to which of its
/// forms (a name its template asks `error_at`), with the status to answer.
#[derive(Default)]
struct Outcome {
    notice: Option<String>,
    error: Option<(&'static str, String)>,
    status: Option<StatusCode>,
}

impl Outcome {
    /// `done`'s notice, or its failure shown next to the form `place`.
    fn of(done: Result<String, impl Into<crate::error::XaiError>>, place: &'static str) -> Self {
        match done {
            Ok(notice) => Self::notice(notice),
            Err(error) => Self::failed(place, failure(error)),
        }
    }

    fn notice(notice: String) -> Self {
        Self {
            notice: Some(notice),
            ..Self::default()
        }
    }

    fn failed(place: &'static str, (status, message): (StatusCode, String)) -> Self {
        Self {
            notice: None,
            error: Some((place, message)),
            status: Some(status),
        }
    }

    /// The failure to show next to the form `place`.
    fn error_at(&self, place: &str) -> Option<&str> {
        self.error
            .as_ref()
            .filter(|(at, _)| *at == place)
            .map(|(_, message)| message.as_str())
    }

    fn status(&self) -> StatusCode {
        self.status.unwrap_or(StatusCode::OK)
    }
}

/// A page sending the person on to another site (a provider's sign-in, a payment page) by a
/// link they follow: the pages' CSP lets forms post only here, and a form's redirect elsewhere
/// would count as its target.
#[derive(Template)]
#[template(path = "continue.html")]
struct ContinuePage {
    layout: Layout,
    heading: String,
    explanation: String,
    href: String,
    label: String,
    /// Where "Cancel" goes.
    back: String,
}

impl std::ops::Deref for ContinuePage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

/// A day (`YYYY-MM-DD`) as the moment it starts, UTC; the next day's start with `next`.
fn day_start(field: &str, text: &str, next: bool) -> Result<Option<tollgate_domain::Timestamp>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let day = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| format!("{field} must be a day, YYYY-MM-DD"))?;
    let day = if next { day.succ_opt().unwrap_or(day) } else { day };
    Ok(day.and_hms_opt(0, 0, 0).map(|start| start.and_utc()))
}

/// A team in the switcher.
#[derive(Clone)]
struct TeamChoice {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct ConsoleQuery {
    team: Option<String>,
}

/// What every console page shows around its content: the signed-in person, their teams, the
/// current one (as a member: the caller the services take), and the CSRF token.
struct Context {
    visitor: Visitor,
    teams: Vec<TeamChoice>,
    team_id: TeamId,
    team_name: String,
    caller: tollgate_core::Caller,
}

/// The console's context: signed in (else the sign-in page), the team asked for, else the one
/// remembered, else the Personal Team.
async fn context(state: &AppState, headers: &HeaderMap, asked: Option<String>) -> Result<Context, Response> {
    let Some(visitor) = visitor(state, headers).await else {
        return Err(Redirect::to("/sign-in").into_response());
    };
    let memberships = state
        .accounts
        .memberships(&visitor.user)
        .await
        .map_err(|error| error_page(failure(error)))?;
    let wanted: Option<TeamId> = asked
        .or_else(|| cookie(headers, TEAM_COOKIE))
        .and_then(|id| id.parse().ok());
    let current = wanted
        .and_then(|id| memberships.iter().find(|m| m.team.id == id))
        .or_else(|| memberships.iter().find(|m| m.team.personal))
        .or_else(|| memberships.first())
        .ok_or_else(|| error_page((StatusCode::NOT_FOUND, "You are not a member of any team.".into())))?;
    let caller = state
        .accounts
        .member(&visitor.user, current.team.id)
        .await
        .map_err(|error| error_page(failure(error)))?;
    Ok(Context {
        teams: memberships
            .iter()
            .map(|m| TeamChoice {
                id: m.team.id.to_string(),
                name: m.team.name.clone(),
            })
            .collect(),
        team_id: current.team.id,
        team_name: current.team.name.clone(),
        caller,
        visitor,
    })
}

/// What every console page shows around its content: the layout and the top bar (team
/// switcher, tabs, the signed-in address, the reminder to verify it).
struct Frame {
    layout: Layout,
    /// The page's path, for the switcher and the current tab.
    here: &'static str,
    teams: Vec<TeamChoice>,
    team_id: String,
    team_name: String,
    user_email: String,
    email_verified: bool,
    /// Whether the Audit Log tab is shown (a Member never sees what they cannot open).
    sees_audit_log: bool,
    /// Whether the Billing tab is shown.
    sees_billing: bool,
    /// Whether the Management Keys tab is shown.
    sees_management_keys: bool,
    /// Whether the way to the operator pages is shown (an operator's address).
    sees_operator: bool,
}

impl std::ops::Deref for Frame {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

impl Context {
    /// The frame of the page at `here`.
    fn frame(&self, state: &AppState, here: &'static str) -> Frame {
        Frame {
            layout: Layout::new(state, self.visitor.csrf.clone()),
            here,
            teams: self.teams.clone(),
            team_id: self.team_id.to_string(),
            team_name: self.team_name.clone(),
            user_email: self.visitor.user.email.as_ref().to_owned(),
            email_verified: self.visitor.user.email_verified_at.is_some(),
            sees_audit_log: self.caller.allows(Permission::ViewAuditLog),
            sees_billing: self.caller.allows(Permission::ManageBilling),
            sees_management_keys: self.caller.allows(Permission::ManageManagementKeys),
            sees_operator: state.operators.names(&self.visitor.user),
        }
    }
}

/// A console page, remembering its team.
fn console_page(state: &AppState, team_id: TeamId, page: &impl Template) -> Response {
    let mut response = html(StatusCode::OK, page);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, TEAM_COOKIE, &team_id.to_string(), 365 * 86_400, "Lax"),
    );
    response
}

/// A fragment rendered for a page, or `None` (logged) when it could not be.
fn rendered(fragment: &impl Template) -> Option<String> {
    fragment
        .render()
        .inspect_err(|error| tracing::error!(%error, "a fragment could not be rendered"))
        .ok()
}

/// The page for a fragment that could not be rendered.
fn unrendered() -> Response {
    error_page((
        StatusCode::INTERNAL_SERVER_ERROR,
        "The page could not be rendered".into(),
    ))
}

fn error_page((status, message): (StatusCode, String)) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Error</title>\
             <link rel=\"stylesheet\" href=\"{}\" integrity=\"{}\"><main class=\"narrow\">\
             <p role=\"alert\">{}</p><p><a href=\"/console\">Back to the console</a></p></main>",
            CONSOLE_CSS.path,
            CONSOLE_CSS.integrity,
            escape(&message)
        ),
    )
        .into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The team of a change, as the signed-in member (CSRF checked: htmx's header, or a plain
/// form's field), and the CSRF token to write into the answer.
async fn member_of(
    state: &AppState,
    headers: &HeaderMap,
    team_id: &str,
    form_csrf: Option<&str>,
) -> Result<(tollgate_core::Caller, String), (StatusCode, String)> {
    let visitor = acting(state, headers, form_csrf).await.map_err(failure)?;
    let team_id: TeamId = team_id
        .parse()
        .map_err(|_| (StatusCode::NOT_FOUND, "No such team".to_owned()))?;
    let caller = state.accounts.member(&visitor.user, team_id).await.map_err(failure)?;
    Ok((caller, visitor.csrf))
}

/// What a plain form sends with a change (htmx sends the CSRF token as a header instead): the
/// token, and whether a destructive change was confirmed (htmx asks in a dialog; without
/// script, the page asks first).
#[derive(Deserialize, Default)]
pub(super) struct ActionForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    confirmed: Option<String>,
}

impl ActionForm {
    fn confirmed(&self) -> bool {
        self.confirmed.as_deref() == Some("yes")
    }
}

/// A change refused before it could be tried (not signed in, a bad CSRF token, not a
/// member): in place of the fragment `#id` for htmx, as an error page for a plain form.
fn refused_change(headers: &HeaderMap, id: &str, problem: (StatusCode, String)) -> Response {
    if from_htmx(headers) {
        fragment_error(id, problem)
    } else {
        error_page(problem)
    }
}

/// Whether htmx sent the request: it gets a fragment; a plain form gets the whole page.
fn from_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

/// An error where a fragment (`#id`) would go (htmx swaps 4xx answers in, as the layout
/// configures).
fn fragment_error(id: &str, (status, message): (StatusCode, String)) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<div id=\"{id}\" class=\"card\"><p class=\"error\" role=\"alert\">{}</p></div>",
            escape(&message)
        ),
    )
        .into_response()
}

async fn htmx() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        HTMX,
    )
        .into_response()
}
