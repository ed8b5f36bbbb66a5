//! Signing in and up: the sign-in and sign-up pages, the second factor, a provider's callback and
//! the choice for an address that has an account, and signing out.

use super::*;

/// Where a sign-in goes on to: the console, or back to the page that sent the person to sign
/// in. A fixed list (anything else is the console), so no link can send a person elsewhere.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub(super) enum Then {
    #[default]
    Console,
    /// The invitations waiting for the address (`/accept-invitation`).
    Invitations,
}

impl Then {
    fn parse(text: &str) -> Self {
        match text {
            "invitations" => Self::Invitations,
            _ => Self::Console,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Console => "console",
            Self::Invitations => "invitations",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Console => "/console",
            Self::Invitations => "/accept-invitation",
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ThenQuery {
    #[serde(default)]
    then: String,
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    layout: Layout,
    error: Option<String>,
    email: String,
    providers: Vec<(String, String)>,
    then: &'static str,
}

impl std::ops::Deref for SignInPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

fn sign_in_form(state: &AppState, status: StatusCode, email: String, error: Option<String>, then: Then) -> Response {
    let page = SignInPage {
        layout: Layout::new(state, String::new()),
        error,
        email,
        providers: state.federation.providers(),
        then: then.as_str(),
    };
    html(status, &page)
}

pub(super) async fn sign_in_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ThenQuery>,
) -> Response {
    let then = Then::parse(&query.then);
    if visitor(&state, &headers).await.is_some() {
        return Redirect::to(then.path()).into_response();
    }
    sign_in_form(&state, StatusCode::OK, String::new(), None, then)
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

pub(super) async fn sign_up_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
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
pub(super) struct SignUpForm {
    name: String,
    email: String,
    password: String,
}

/// A new account with its Personal Team (a link to verify the address is mailed), signed in.
pub(super) async fn sign_up(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SignUpForm>,
) -> Response {
    match state
        .accounts
        .sign_up(&form.email, &form.name, &form.password, &meta)
        .await
    {
        Ok(done) => signed_in(&state, &done, Then::Console),
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
pub(super) struct SignInForm {
    email: String,
    password: String,
    #[serde(default)]
    then: String,
}

/// Signed in: the session and CSRF cookies, and on to the console (or where `then` says).
fn signed_in(state: &AppState, signed_in: &SignedIn, then: Then) -> Response {
    let max_age = (signed_in.session.absolute_expires_at - signed_in.session.created_at).num_seconds();
    let mut response = Redirect::to(then.path()).into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, state.cookies.set(signed_in.token.expose(), max_age));
    headers.append(
        header::SET_COOKIE,
        set_cookie(state, CSRF_COOKIE, signed_in.csrf.expose(), max_age, "Strict"),
    );
    response
}

async fn outcome(state: &AppState, outcome: SignInOutcome, then: Then) -> Response {
    match outcome {
        SignInOutcome::SignedIn(done) => signed_in(state, &done, then),
        SignInOutcome::SecondFactor { challenge, methods } => {
            let step = SecondStep {
                challenge: challenge.expose().to_owned(),
                passkey: methods.contains(&"passkey"),
                then,
            };
            second_factor_page(state, StatusCode::OK, step, None).await
        }
        SignInOutcome::Deleted { restore, purge_after } => {
            let page = RestorePage {
                layout: Layout::new(state, String::new()),
                token: restore.expose().to_owned(),
                until: purge_after.format("%Y-%m-%d").to_string(),
                error: None,
            };
            html(StatusCode::OK, &page)
        }
    }
}

pub(super) async fn sign_in(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SignInForm>,
) -> Response {
    let then = Then::parse(&form.then);
    match state.accounts.sign_in(&form.email, &form.password, &meta).await {
        Ok(result) => outcome(&state, result, then).await,
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(&state, status, form.email, Some(message), then)
        }
    }
}

/// Offered when a deleted account signs in within its 30 days.
#[derive(Template)]
#[template(path = "restore.html")]
struct RestorePage {
    layout: Layout,
    token: String,
    until: String,
    error: Option<String>,
}

impl std::ops::Deref for RestorePage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

#[derive(Deserialize)]
pub(super) struct RestoreForm {
    token: String,
}

/// Restores a deleted account with the token its sign-in gave, and signs it in.
pub(super) async fn restore(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<RestoreForm>,
) -> Response {
    match state.accounts.restore_account(&form.token, &meta).await {
        Ok(done) => signed_in(&state, &done, Then::Console),
        Err(error) => {
            let (status, message) = failure(error);
            let page = RestorePage {
                layout: Layout::new(&state, String::new()),
                token: String::new(),
                until: String::new(),
                error: Some(message),
            };
            html(status, &page)
        }
    }
}

#[derive(Template)]
#[template(path = "second_factor.html")]
struct SecondFactorPage {
    layout: Layout,
    challenge: String,
    then: &'static str,
    /// A challenge for the account's passkeys, when it has some: answered by the console's
    /// script (WebAuthn has no form of its own), then sent with this page's form.
    passkey: Option<PasskeyPrompt>,
    error: Option<String>,
}

impl std::ops::Deref for SecondFactorPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

/// A WebAuthn ceremony a page hands to the console's script: its token (sent back with the
/// answer) and the options for `navigator.credentials`, as JSON.
#[derive(Clone)]
pub(super) struct PasskeyPrompt {
    pub(super) ceremony: String,
    pub(super) options: String,
}

impl From<tollgate_core::accounts::PasskeyChallenge> for PasskeyPrompt {
    fn from(challenge: tollgate_core::accounts::PasskeyChallenge) -> Self {
        Self {
            ceremony: challenge.ceremony.expose().to_owned(),
            options: challenge.options.to_string(),
        }
    }
}

/// A sign-in waiting for its second factor.
struct SecondStep {
    challenge: String,
    /// Whether to offer the account's passkeys.
    passkey: bool,
    then: Then,
}

/// The second step of a sign-in: a code, a recovery code, or (when the account has one) a
/// passkey, whose challenge is made for this page.
async fn second_factor_page(state: &AppState, status: StatusCode, step: SecondStep, error: Option<String>) -> Response {
    let SecondStep {
        challenge,
        passkey,
        then,
    } = step;
    let passkey = if passkey {
        match state.accounts.passkey_challenge_for_sign_in(&challenge).await {
            Ok(prompt) => Some(prompt.into()),
            // The step expired or its account lost its passkeys: the code field still answers.
            Err(error) => {
                tracing::debug!(%error, "no passkey challenge for a sign-in");
                None
            }
        }
    } else {
        None
    };
    let page = SecondFactorPage {
        layout: Layout::new(state, String::new()),
        challenge,
        then: then.as_str(),
        passkey,
        error,
    };
    html(status, &page)
}

#[derive(Deserialize)]
pub(super) struct SecondFactorForm {
    challenge: String,
    #[serde(default)]
    then: String,
    #[serde(default)]
    code: String,
    /// A passkey's answer (the script fills both).
    #[serde(default)]
    ceremony: String,
    #[serde(default)]
    credential: String,
}

impl SecondFactorForm {
    /// The factor the form carries: a passkey's answer if the script gave one, else the code.
    fn factor(&self) -> Result<SecondFactor, AccountError> {
        if self.ceremony.is_empty() {
            return Ok(second_factor_of(self.code.trim()));
        }
        Ok(SecondFactor::Passkey {
            ceremony: self.ceremony.clone(),
            credential: super::account::passkey_answer(&self.credential)?,
        })
    }
}

pub(super) async fn second_factor(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<SecondFactorForm>,
) -> Response {
    let signed_in = match form.factor() {
        Ok(factor) => {
            state
                .accounts
                .sign_in_second_factor(&form.challenge, &factor, &meta)
                .await
        }
        Err(error) => Err(error),
    };
    match signed_in {
        Ok(result) => outcome(&state, result, Then::parse(&form.then)).await,
        Err(error) => {
            let (status, message) = failure(error);
            // The page again, with a new passkey challenge if the account has passkeys (a
            // ceremony is answered once).
            let step = SecondStep {
                then: Then::parse(&form.then),
                challenge: form.challenge,
                passkey: true,
            };
            second_factor_page(&state, status, step, Some(message)).await
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
pub(crate) async fn federated(state: &AppState, outcome: Result<Federated, FederationError>) -> Response {
    match outcome {
        Ok(Federated::SignIn(result)) => self::outcome(state, result, Then::Console).await,
        Ok(Federated::Linked(_)) => Redirect::to("/console").into_response(),
        Ok(Federated::EmailInUse { pending, email }) => {
            choose(state, StatusCode::OK, Some(email), pending.expose().to_owned(), None)
        }
        Ok(Federated::EmailNeeded { pending }) => {
            choose(state, StatusCode::OK, None, pending.expose().to_owned(), None)
        }
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(state, status, String::new(), Some(message), Then::Console)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct LinkForm {
    pending: String,
    email: String,
    password: String,
}

/// Links the pending sign-in to the existing account, signing in to it with its password.
pub(super) async fn sign_in_and_link(
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
        Ok(_) => signed_in(&state, &done, Then::Console),
        Err(error) => {
            let (status, message) = failure(error);
            again(status, message)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct PendingForm {
    pending: String,
}

/// A separate account at the address in use, for the pending sign-in.
pub(super) async fn separate_account(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<PendingForm>,
) -> Response {
    match state.federation.complete_separately(&form.pending, &meta).await {
        Ok(done) => signed_in(&state, &done, Then::Console),
        Err(error) => {
            let (status, message) = failure(error);
            sign_in_form(&state, status, String::new(), Some(message), Then::Console)
        }
    }
}

#[derive(Deserialize)]
pub(super) struct AddressForm {
    pending: String,
    email: String,
}

/// A new account with another address (verified by mail) for the pending sign-in.
pub(super) async fn account_with_address(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<AddressForm>,
) -> Response {
    match state
        .federation
        .complete_with_email(&form.pending, &form.email, &meta)
        .await
    {
        Ok(done) => signed_in(&state, &done, Then::Console),
        Err(error) => {
            let (status, message) = failure(error);
            choose(&state, status, None, form.pending, Some(message))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    csrf: Option<String>,
}

pub(super) async fn sign_out(
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

#[cfg(test)]
mod tests {
    use super::Then;

    #[test]
    fn a_sign_in_goes_on_only_to_pages_of_its_own_list() {
        assert_eq!(Then::parse("invitations").path(), "/accept-invitation");
        for other in [
            "",
            "console",
            "//evil.example",
            "https://evil.example/",
            "/admin",
            "Invitations",
        ] {
            assert_eq!(Then::parse(other), Then::Console, "{other}");
        }
    }
}
