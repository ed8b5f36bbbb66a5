//! The web console's pages: server-rendered HTML (askama templates compiled into the binary),
//! enhanced with htmx (vendored, served from `/assets/` with Subresource Integrity). They call
//! the same services as the console's JSON API (`console.rs`); nothing here holds a rule of its
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
use tollgate_domain::{ApiKey, ApiKeyId, Permission, Session, TeamId, User};

use crate::AppState;
use crate::extract::RequestMeta;

/// The vendored htmx, its URL (versioned, so it is cached for good) and its SRI hash.
const HTMX: &[u8] = include_bytes!("../assets/htmx-2.0.4.min.js");
const HTMX_PATH: &str = "/assets/htmx-2.0.4.min.js";
static HTMX_INTEGRITY: LazyLock<String> = LazyLock::new(|| {
    use base64::Engine as _;
    use sha2::Digest as _;
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(HTMX))
    )
});

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
        .route("/console", get(console))
        .route("/console/teams/{team_id}/api-keys", post(create_key))
        .route("/console/teams/{team_id}/api-keys/{key_id}/{action}", post(change_key))
        .route(HTMX_PATH, get(htmx))
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
    csrf: String,
}

impl Layout {
    fn new(state: &AppState, csrf: String) -> Self {
        Self {
            product: state.settings.owned_by.clone(),
            htmx_url: HTMX_PATH,
            htmx_integrity: HTMX_INTEGRITY.as_str(),
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

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    error: Option<String>,
    email: String,
    providers: Vec<(String, String)>,
}

impl std::ops::Deref for SignInPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

fn sign_in_form(state: &AppState, status: StatusCode, email: String, error: Option<String>) -> Response {
    let page = SignInPage {
        layout: Layout::new(state, String::new()),
        error,
        email,
        providers: state.federation.providers(),
    };
    html(status, &page)
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if visitor(&state, &headers).await.is_some() {
        return Redirect::to("/console").into_response();
    }
    sign_in_form(&state, StatusCode::OK, String::new(), None)
}

#[derive(Template)]
#[template(path = "sign_up.html")]
struct SignUpPage {
    layout: Layout,
    error: Option<String>,
    name: String,
    email: String,
}

impl std::ops::Deref for SignUpPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

async fn sign_up_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if visitor(&state, &headers).await.is_some() {
        return Redirect::to("/console").into_response();
    }
    let page = SignUpPage {
        layout: Layout::new(&state, String::new()),
        error: None,
        name: String::new(),
        email: String::new(),
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
struct SignUpForm {
    name: String,
    email: String,
    password: String,
}

/// A new account with its Personal Team (a link to verify the address is mailed), signed in.
async fn sign_up(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SignUpForm>,
) -> Response {
    match state
        .accounts
        .sign_up(&form.email, &form.name, &form.password, &meta)
        .await
    {
        Ok(done) => signed_in(&state, &done),
        Err(error) => {
            let (status, message) = failure(error);
            let page = SignUpPage {
                layout: Layout::new(&state, String::new()),
                error: Some(message),
                name: form.name,
                email: form.email,
            };
            html(status, &page)
        }
    }
}

#[derive(Deserialize)]
struct SignInForm {
    email: String,
    password: String,
}

/// What a page says for a failure, and with which status: the JSON API's mapping, so both
/// surfaces answer alike.
fn failure(error: impl Into<crate::error::XaiError>) -> (StatusCode, String) {
    let error = error.into();
    (error.status(), error.body().error.clone())
}

/// Signed in: the session and CSRF cookies, and on to the console.
fn signed_in(state: &AppState, signed_in: &SignedIn) -> Response {
    let max_age = (signed_in.session.absolute_expires_at - signed_in.session.created_at).num_seconds();
    let mut response = Redirect::to("/console").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, state.cookies.set(signed_in.token.expose(), max_age));
    headers.append(
        header::SET_COOKIE,
        set_cookie(state, CSRF_COOKIE, signed_in.csrf.expose(), max_age, "Strict"),
    );
    response
}

fn outcome(state: &AppState, outcome: SignInOutcome, email: String) -> Response {
    match outcome {
        SignInOutcome::SignedIn(done) => signed_in(state, &done),
        SignInOutcome::SecondFactor { challenge, .. } => html(
            StatusCode::OK,
            &SecondFactorPage {
                layout: Layout::new(state, String::new()),
                challenge: challenge.expose().to_owned(),
                error: None,
            },
        ),
        SignInOutcome::Deleted { purge_after, .. } => sign_in_form(
            state,
            StatusCode::FORBIDDEN,
            email,
            Some(format!(
                "This account was deleted; it can be restored until {} (restoring from the console comes later; use \
                 POST /api/auth/restore).",
                purge_after.format("%Y-%m-%d")
            )),
        ),
    }
}

async fn sign_in(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SignInForm>,
) -> Response {
    match state.accounts.sign_in(&form.email, &form.password, &meta).await {
        Ok(result) => outcome(&state, result, form.email),
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(&state, status, form.email, Some(message))
        }
    }
}

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage {
    layout: Layout,
    challenge: String,
    error: Option<String>,
}

impl std::ops::Deref for SecondFactorPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

#[derive(Deserialize)]
struct SecondFactorForm {
    challenge: String,
    code: String,
}

async fn second_factor(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SecondFactorForm>,
) -> Response {
    let code = form.code.trim();
    // Six digits are an authenticator's code; anything else is tried as a recovery code.
    let factor = if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
        SecondFactor::Totp(code.to_owned())
    } else {
        SecondFactor::RecoveryCode(code.to_owned())
    };
    match state
        .accounts
        .sign_in_second_factor(&form.challenge, &factor, &meta)
        .await
    {
        Ok(result) => outcome(&state, result, String::new()),
        Err(error) => {
            let (status, message) = failure(error);
            let page = SecondFactorPage {
                layout: Layout::new(&state, String::new()),
                challenge: form.challenge,
                error: Some(message),
            };
            html(status, &page)
        }
    }
}

/// Whether the request is a browser's navigation (it asks for HTML first).
pub(crate) fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.starts_with("text/html"))
}

#[derive(Template)]
#[template(path = "choose.html")]
struct ChoosePage {
    layout: Layout,
    /// The address in use (`None`: the provider vouched for none).
    email: Option<String>,
    pending: String,
    error: Option<String>,
}

impl std::ops::Deref for ChoosePage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

fn choose(
    state: &AppState,
    status: StatusCode,
    email: Option<String>,
    pending: String,
    error: Option<String>,
) -> Response {
    let page = ChoosePage {
        layout: Layout::new(state, String::new()),
        email,
        pending,
        error,
    };
    html(status, &page)
}

/// Where a provider's callback lands in a browser: the console once signed in, the second
/// factor, or the choice for an address that has an account (link, a separate account, or
/// another address).
pub(crate) fn federated(state: &AppState, outcome: Result<Federated, FederationError>) -> Response {
    match outcome {
        Ok(Federated::SignIn(result)) => self::outcome(state, result, String::new()),
        Ok(Federated::Linked(_)) => Redirect::to("/console").into_response(),
        Ok(Federated::EmailInUse { pending, email }) => {
            choose(state, StatusCode::OK, Some(email), pending.expose().to_owned(), None)
        }
        Ok(Federated::EmailNeeded { pending }) => {
            choose(state, StatusCode::OK, None, pending.expose().to_owned(), None)
        }
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(state, status, String::new(), Some(message))
        }
    }
}

#[derive(Deserialize)]
struct LinkForm {
    pending: String,
    email: String,
    password: String,
}

/// Links the pending sign-in to the existing account, signing in to it with its password.
async fn sign_in_and_link(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<LinkForm>,
) -> Response {
    let again = |status, message| {
        choose(
            &state,
            status,
            Some(form.email.clone()),
            form.pending.clone(),
            Some(message),
        )
    };
    let done = match state.accounts.sign_in(&form.email, &form.password, &meta).await {
        Ok(SignInOutcome::SignedIn(done)) => done,
        Ok(_) => {
            return again(
                StatusCode::CONFLICT,
                "This account has two-factor authentication or was deleted: sign in to it first, then add this \
                 sign-in method from its account page."
                    .to_owned(),
            );
        }
        Err(error) => {
            let (status, message) = failure(error);
            return again(status, message);
        }
    };
    match state
        .federation
        .link_pending(&done.user, &done.session, &form.pending, &meta)
        .await
    {
        Ok(_) => signed_in(&state, &done),
        Err(error) => {
            let (status, message) = failure(error);
            again(status, message)
        }
    }
}

#[derive(Deserialize)]
struct PendingForm {
    pending: String,
}

/// A separate account at the address in use, for the pending sign-in.
async fn separate_account(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<PendingForm>,
) -> Response {
    match state.federation.complete_separately(&form.pending, &meta).await {
        Ok(done) => signed_in(&state, &done),
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(&state, status, String::new(), Some(message))
        }
    }
}

#[derive(Deserialize)]
struct AddressForm {
    pending: String,
    email: String,
}

/// A new account with another address (verified by mail) for the pending sign-in.
async fn account_with_address(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<AddressForm>,
) -> Response {
    match state
        .federation
        .complete_with_email(&form.pending, &form.email, &meta)
        .await
    {
        Ok(done) => signed_in(&state, &done),
        Err(error) => {
            let (status, message) = failure(error);
            choose(&state, status, None, form.pending, Some(message))
        }
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: Option<String>,
}

async fn sign_out(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Ok(visitor) = acting(&state, &headers, form.csrf.as_deref()).await
        && let Err(error) = state.accounts.sign_out(&visitor.session, &visitor.user, &meta).await
    {
        tracing::warn!(%error, "signing out failed");
    }
    let mut response = Redirect::to("/sign-in").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, state.cookies.set("", 0));
    headers.append(header::SET_COOKIE, set_cookie(&state, CSRF_COOKIE, "", 0, "Strict"));
    response
}

/// A team in the switcher.
struct TeamChoice {
    id: String,
    name: String,
}

/// A key as the table shows it.
struct KeyRow {
    id: String,
    name: String,
    redacted: String,
    status: &'static str,
    acls: Vec<String>,
    created: String,
}

impl KeyRow {
    fn new(key: &ApiKey) -> Self {
        let status = if key.blocked {
            "blocked"
        } else if key.disabled {
            "disabled"
        } else {
            "active"
        };
        Self {
            id: key.id.to_string(),
            name: key.name.clone(),
            redacted: key.redacted.clone(),
            status,
            acls: key.acls.as_slice().iter().map(ToString::to_string).collect(),
            created: key.created_at.format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }
}

/// A key just created: its secret, shown once.
struct Created {
    name: String,
    secret: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysFragment {
    team_id: String,
    keys: Vec<KeyRow>,
    can_manage: bool,
    created: Option<Created>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console.html")]
struct ConsolePage {
    layout: Layout,
    teams: Vec<TeamChoice>,
    team_id: String,
    team_name: String,
    user_email: String,
    email_verified: bool,
    can_manage: bool,
    keys: String,
}

impl std::ops::Deref for ConsolePage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

#[derive(Deserialize)]
struct ConsoleQuery {
    team: Option<String>,
}

/// The keys table of `caller`'s team.
async fn keys_fragment(
    state: &AppState,
    caller: &tollgate_core::Caller,
    meta: &tollgate_domain::RequestContext,
    created: Option<Created>,
    error: Option<String>,
) -> Result<KeysFragment, KeyError> {
    let keys = state
        .keys
        .list_api_keys(caller, caller.team_id(), None, 1_000, meta)
        .await?;
    Ok(KeysFragment {
        team_id: caller.team_id().to_string(),
        keys: keys.iter().map(KeyRow::new).collect(),
        can_manage: caller.allows(Permission::ManageOwnApiKeys),
        created,
        error,
    })
}

/// The console: the top bar (team switcher, sign-out) and the current team's API keys. The
/// team chosen is remembered in a cookie; the Personal Team otherwise.
async fn console(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let Some(visitor) = visitor(&state, &headers).await else {
        return Redirect::to("/sign-in").into_response();
    };
    let memberships = match state.accounts.memberships(&visitor.user).await {
        Ok(memberships) => memberships,
        Err(error) => return error_page(failure(error)),
    };
    let wanted: Option<TeamId> = query
        .team
        .or_else(|| cookie(&headers, TEAM_COOKIE))
        .and_then(|id| id.parse().ok());
    let Some(current) = wanted
        .and_then(|id| memberships.iter().find(|m| m.team.id == id))
        .or_else(|| memberships.iter().find(|m| m.team.personal))
        .or_else(|| memberships.first())
    else {
        return error_page((StatusCode::NOT_FOUND, "You are not a member of any team.".into()));
    };
    let caller = match state.accounts.member(&visitor.user, current.team.id).await {
        Ok(caller) => caller,
        Err(error) => return error_page(failure(error)),
    };
    let keys = match keys_fragment(&state, &caller, &meta, None, None).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let keys_html = match keys.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(%error, "the keys table could not be rendered");
            return error_page((
                StatusCode::INTERNAL_SERVER_ERROR,
                "The page could not be rendered".into(),
            ));
        }
    };
    let page = ConsolePage {
        layout: Layout::new(&state, visitor.csrf),
        teams: memberships
            .iter()
            .map(|m| TeamChoice {
                id: m.team.id.to_string(),
                name: m.team.name.clone(),
            })
            .collect(),
        team_id: current.team.id.to_string(),
        team_name: current.team.name.clone(),
        user_email: visitor.user.email.as_ref().to_owned(),
        email_verified: visitor.user.email_verified_at.is_some(),
        can_manage: keys.can_manage,
        keys: keys_html,
    };
    let mut response = html(StatusCode::OK, &page);
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, TEAM_COOKIE, &current.team.id.to_string(), 365 * 86_400, "Lax"),
    );
    response
}

fn error_page((status, message): (StatusCode, String)) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><meta charset=\"utf-8\"><title>Error</title><main style=\"font-family:system-ui;margin:3rem\">\
             <p role=\"alert\">{}</p><p><a href=\"/console\">Back to the console</a></p></main>",
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

/// The team of a fragment request, as the signed-in member (CSRF checked).
async fn member_of(
    state: &AppState,
    headers: &HeaderMap,
    team_id: &str,
) -> Result<tollgate_core::Caller, (StatusCode, String)> {
    let visitor = acting(state, headers, None).await.map_err(failure)?;
    let team_id: TeamId = team_id
        .parse()
        .map_err(|_| (StatusCode::NOT_FOUND, "No such team".to_owned()))?;
    state.accounts.member(&visitor.user, team_id).await.map_err(failure)
}

/// The keys fragment (after a change), or an error in its place.
async fn keys_response(
    state: &AppState,
    caller: &tollgate_core::Caller,
    meta: &tollgate_domain::RequestContext,
    created: Option<Created>,
    problem: Option<(StatusCode, String)>,
) -> Response {
    let status = problem.as_ref().map_or(StatusCode::OK, |(status, _)| *status);
    match keys_fragment(state, caller, meta, created, problem.map(|(_, message)| message)).await {
        Ok(fragment) => html(status, &fragment),
        Err(error) => fragment_error(failure(error)),
    }
}

/// An error where a fragment would go (htmx swaps 4xx answers in, as the layout configures).
fn fragment_error((status, message): (StatusCode, String)) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<div id=\"keys\" class=\"card\"><p class=\"error\" role=\"alert\">{}</p></div>",
            escape(&message)
        ),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CreateKeyForm {
    name: String,
}

/// Creates a key with access to every endpoint and model (pickers for ACLs and limits come
/// with the next console pages; the Management API sets them now), and shows its secret once.
async fn create_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<CreateKeyForm>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(failure) => return fragment_error(failure),
    };
    let new = NewApiKey {
        name: form.name.trim().to_owned(),
        acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
        qps: None,
        qpm: None,
        tpm: None,
        expire_time: None,
    };
    match state.keys.create_api_key(&caller, caller.team_id(), new, &meta).await {
        Ok((key, plain)) => {
            let created = Created {
                name: key.name.clone(),
                secret: plain.expose().to_owned(),
            };
            let mut response = keys_response(&state, &caller, &meta, Some(created), None).await;
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => keys_response(&state, &caller, &meta, None, Some(failure(error))).await,
    }
}

/// Disables, enables or deletes a key.
async fn change_key(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, key_id, action)): Path<(String, String, String)>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(failure) => return fragment_error(failure),
    };
    let Ok(key_id) = key_id.parse::<ApiKeyId>() else {
        return keys_response(
            &state,
            &caller,
            &meta,
            None,
            Some((StatusCode::NOT_FOUND, "No such key".into())),
        )
        .await;
    };
    let done = match action.as_str() {
        "disable" | "enable" => state
            .keys
            .update_api_key(
                &caller,
                key_id,
                ApiKeyChanges {
                    disabled: Some(action == "disable"),
                    ..ApiKeyChanges::default()
                },
                &meta,
            )
            .await
            .map(|_| ()),
        "delete" => state.keys.delete_api_key(&caller, key_id, &meta).await,
        _ => {
            return keys_response(
                &state,
                &caller,
                &meta,
                None,
                Some((StatusCode::NOT_FOUND, "No such action".into())),
            )
            .await;
        }
    };
    let problem = done.err().map(failure);
    keys_response(&state, &caller, &meta, None, problem).await
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
