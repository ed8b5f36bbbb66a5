//! The account's page (`/account`): the name and the email address (a change is confirmed from
//! the new address), the ways to sign in (the password; providers, added and removed, never the
//! last), Security (two-factor authentication: TOTP enrolled with a QR code rendered here, the
//! recovery codes shown once to copy or download, passkeys), and deleting the account (restored
//! by signing in within 30 days). Plain forms, answered with the whole page; every change asks
//! again for what the services ask (the password, a second factor).

use base64::Engine as _;
use tollgate_core::accounts::TotpEnrollment;

use super::auth::PasskeyPrompt;
use super::*;

/// An external sign-in as the table shows it.
struct IdentityRow {
    id: String,
    provider: String,
    email: String,
    linked: String,
}

/// A passkey as the table shows it.
struct PasskeyRow {
    id: String,
    name: String,
    added: String,
    last_used: String,
}

/// A TOTP enrolment begun: the QR code to scan, and the seed to type instead.
struct Enrolling {
    qr_code: String,
    secret: String,
}

impl Enrolling {
    fn new(enrollment: &TotpEnrollment) -> Self {
        Self {
            qr_code: qr_code(&enrollment.otpauth_uri),
            secret: enrollment.secret.clone(),
        }
    }
}

/// `text` as a QR code: an SVG image in a `data:` URL (the pages' CSP allows `data:` images).
/// The `otpauth://` URI of a seed always fits a QR code; should it not, the page shows the seed
/// to type, and no image.
fn qr_code(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .quiet_zone(true)
                .build();
            format!(
                "data:image/svg+xml;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(svg)
            )
        }
        Err(error) => {
            tracing::error!(%error, "a TOTP seed's URI did not fit a QR code");
            String::new()
        }
    }
}

/// New recovery codes, shown once: as text to copy, and as a file to download.
struct NewCodes {
    codes: Vec<String>,
    download: String,
}

impl NewCodes {
    fn new(product: &str, codes: &[tollgate_domain::mfa::RecoveryCode]) -> Self {
        let codes: Vec<String> = codes.iter().map(tollgate_domain::mfa::RecoveryCode::display).collect();
        let text = format!(
            "{product} recovery codes\n\nEach code signs you in once when your authenticator is not at hand.\n\n{}\n",
            codes.join("\n")
        );
        let download = format!(
            "data:text/plain;charset=utf-8,{}",
            form_urlencoded::byte_serialize(text.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        );
        Self { codes, download }
    }
}

/// What the page shows beside the account's state, once: a TOTP enrolment begun, new recovery
/// codes, or what a refused form had typed (never a password or a code).
enum Shown {
    Nothing,
    Enrolling(TotpEnrollment),
    Codes(Vec<tollgate_domain::mfa::RecoveryCode>),
    /// A passkey's registration begun: the page hands its challenge to the console's script.
    Registering {
        challenge: PasskeyPrompt,
        name: String,
    },
    Typed {
        name: String,
        new_email: String,
    },
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    name: String,
    /// The new address a refused change had typed.
    new_email: String,
    email: String,
    has_password: bool,
    identities: Vec<IdentityRow>,
    /// Providers this account does not sign in with yet: (name, label).
    providers: Vec<(String, String)>,
    totp: bool,
    passkeys: Vec<PasskeyRow>,
    passkeys_available: bool,
    registering: Option<PasskeyPrompt>,
    /// The name typed for a passkey being added.
    passkey_name: String,
    second_factor: bool,
    recovery_codes_left: u32,
    enrolling: Option<Enrolling>,
    new_codes: Option<NewCodes>,
    outcome: Outcome,
}

impl std::ops::Deref for AccountPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

fn day(at: tollgate_domain::Timestamp) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// `/account`.
pub(super) async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    account_page(&state, &headers, query.team, Outcome::default(), Shown::Nothing).await
}

async fn account_page(
    state: &AppState,
    headers: &HeaderMap,
    team: Option<String>,
    outcome: Outcome,
    shown: Shown,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let user = &context.visitor.user;
    let identities = match state.federation.identities(user).await {
        Ok(identities) => identities,
        Err(error) => return error_page(failure(error)),
    };
    let passkeys = match state.accounts.passkeys(user).await {
        Ok(passkeys) => passkeys,
        Err(error) => return error_page(failure(error)),
    };
    let (totp, recovery_codes_left) = match state.accounts.mfa_status(user).await {
        Ok(status) => status,
        Err(error) => return error_page(failure(error)),
    };
    let frame = context.frame(state, "/account");
    let new_codes = match &shown {
        Shown::Codes(codes) => Some(NewCodes::new(&frame.product, codes)),
        _ => None,
    };
    let (registering, passkey_name) = match &shown {
        Shown::Registering { challenge, name } => (Some(challenge.clone()), name.clone()),
        _ => (None, String::new()),
    };
    let (name, new_email) = match &shown {
        Shown::Typed { name, new_email } if !name.is_empty() => (name.clone(), new_email.clone()),
        Shown::Typed { new_email, .. } => (user.display_name.clone(), new_email.clone()),
        _ => (user.display_name.clone(), String::new()),
    };
    let page = AccountPage {
        name,
        new_email,
        email: user.email.as_ref().to_owned(),
        has_password: user.password_hash.is_some(),
        providers: state
            .federation
            .providers()
            .into_iter()
            .filter(|(name, _)| !identities.iter().any(|identity| &identity.provider == name))
            .collect(),
        identities: identities
            .iter()
            .map(|identity| IdentityRow {
                id: identity.id.to_string(),
                provider: identity.provider.clone(),
                email: identity.email.clone().unwrap_or_default(),
                linked: day(identity.linked_at),
            })
            .collect(),
        totp,
        passkeys: passkeys
            .iter()
            .map(|passkey| PasskeyRow {
                id: passkey.id.to_string(),
                name: passkey.name.clone(),
                added: day(passkey.created_at),
                last_used: passkey.last_used_at.map_or_else(|| "never".to_owned(), day),
            })
            .collect(),
        passkeys_available: state.accounts.passkeys_available(),
        registering,
        passkey_name,
        second_factor: user.has_second_factor(),
        recovery_codes_left,
        enrolling: match &shown {
            Shown::Enrolling(enrollment) => Some(Enrolling::new(enrollment)),
            _ => None,
        },
        new_codes,
        frame,
        outcome,
    };
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = page.outcome.status();
    response
}

/// What the account's forms send: the CSRF token, and what each change asks for.
#[derive(Deserialize, Default)]
pub(super) struct AccountForm {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    new_email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    new_password: String,
    /// A second factor: an authenticator's code, or a recovery code.
    #[serde(default)]
    code: String,
    /// A passkey being added: the ceremony, and the browser's answer (the script fills it).
    #[serde(default)]
    ceremony: String,
    #[serde(default)]
    credential: String,
    #[serde(default)]
    passkey_name: String,
}

impl AccountForm {
    fn password(&self) -> Option<&str> {
        Some(self.password.as_str()).filter(|p| !p.is_empty())
    }

    fn factor(&self) -> Option<SecondFactor> {
        let code = self.code.trim();
        (!code.is_empty()).then(|| second_factor_of(code))
    }
}

/// Runs one change of the account's, as the signed-in person (CSRF checked), then shows the
/// page with its outcome next to the form `place`.
async fn change(
    state: &AppState,
    headers: &HeaderMap,
    form: &AccountForm,
    place: &'static str,
    run: impl AsyncFnOnce(&Visitor) -> Result<(String, Shown), crate::error::XaiError>,
) -> Response {
    let visitor = match acting(state, headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let (outcome, shown) = match run(&visitor).await {
        Ok((notice, shown)) => (Outcome::notice(notice), shown),
        Err(error) => (
            Outcome::failed(place, failure(error)),
            Shown::Typed {
                name: form.name.clone(),
                new_email: form.new_email.clone(),
            },
        ),
    };
    account_page(state, headers, None, outcome, shown).await
}

/// Changes the name shown in the console.
pub(super) async fn rename(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "name", async |visitor| {
        state.accounts.rename(&visitor.user, form.name.trim(), &meta).await?;
        Ok(("Your name was saved.".to_owned(), Shown::Nothing))
    })
    .await
}

/// Asks to change the address: nothing changes until the new address confirms.
pub(super) async fn change_email(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "email", async |visitor| {
        let new_email = form.new_email.trim();
        state
            .accounts
            .request_email_change(
                &visitor.user,
                &visitor.session,
                form.password(),
                form.factor().as_ref(),
                new_email,
                &meta,
            )
            .await?;
        Ok((
            format!(
                "We sent a link to {new_email}. Your address changes when you open it; until then you sign in with the old one."
            ),
            Shown::Nothing,
        ))
    })
    .await
}

/// Changes the password (or sets a first one); the other sessions end.
pub(super) async fn change_password(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "password", async |visitor| {
        state
            .accounts
            .change_password(
                &visitor.user,
                &visitor.session,
                form.password(),
                &form.new_password,
                &meta,
            )
            .await?;
        Ok((
            "Your password was changed; every other session was ended.".to_owned(),
            Shown::Nothing,
        ))
    })
    .await
}

/// Removes the password, when a provider signs the account in too.
pub(super) async fn remove_password(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "password", async |visitor| {
        state
            .accounts
            .remove_password(
                &visitor.user,
                &visitor.session,
                form.password(),
                form.factor().as_ref(),
                &meta,
            )
            .await?;
        Ok((
            "Your password was removed: you sign in with your provider.".to_owned(),
            Shown::Nothing,
        ))
    })
    .await
}

/// Removes an external sign-in (never the last way to sign in).
pub(super) async fn unlink(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(identity_id): Path<String>,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "methods", async |visitor| {
        let id = identity_id
            .parse()
            .map_err(|_| crate::error::XaiError::not_found("no such sign-in method"))?;
        state.federation.unlink(&visitor.user, id, &meta).await?;
        Ok(("The sign-in method was removed.".to_owned(), Shown::Nothing))
    })
    .await
}

/// Starts adding a provider's sign-in: the flow is bound to this browser, and a page links
/// to the provider (a link the person follows: the pages' CSP lets forms post only here, and a
/// form's redirect elsewhere counts as its target).
pub(super) async fn link(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(provider): Path<String>,
    Form(form): Form<AccountForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let label = state
        .federation
        .providers()
        .into_iter()
        .find(|(name, _)| *name == provider)
        .map(|(_, label)| label);
    let started = state
        .federation
        .start(&provider, Some((&visitor.user, &visitor.session)), &meta)
        .await;
    match (started, label) {
        (Ok((url, browser)), Some(label)) => {
            let page = ContinuePage {
                layout: Layout::new(&state, visitor.csrf.clone()),
                heading: format!("Add {label}"),
                explanation: format!(
                    "Sign in at {label}; you come back here with {label} added to your account's ways to sign in."
                ),
                href: url,
                label: format!("Continue to {label}"),
                back: "/account".to_owned(),
            };
            let mut response = html(StatusCode::OK, &page);
            response.headers_mut().append(
                header::SET_COOKIE,
                crate::api::flow_cookie(&state, browser.expose(), 600),
            );
            response
        }
        (Err(error), _) => {
            account_page(
                &state,
                &headers,
                None,
                Outcome::failed("methods", failure(error)),
                Shown::Nothing,
            )
            .await
        }
        (Ok(_), None) => error_page((StatusCode::NOT_FOUND, "No such provider".into())),
    }
}

/// Begins a TOTP enrolment (the password again): the page shows its QR code.
pub(super) async fn begin_totp(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "totp", async |visitor| {
        let enrollment = state
            .accounts
            .begin_totp(&visitor.user, &visitor.session, form.password(), &meta)
            .await?;
        Ok((
            "Scan the code with your authenticator app, then type the code it shows.".to_owned(),
            Shown::Enrolling(enrollment),
        ))
    })
    .await
}

/// Confirms the enrolment with a first code: two-factor authentication is on, the other
/// sessions end, and the recovery codes are shown, once. A code that does not match shows the
/// same QR code again.
pub(super) async fn confirm_totp(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let confirmed = state
        .accounts
        .confirm_totp(&visitor.user, &visitor.session, form.code.trim(), &meta)
        .await;
    let (outcome, shown) = match confirmed {
        Ok(codes) => (
            Outcome::notice(
                "Two-factor authentication is on; every other session was ended. Keep your recovery codes somewhere safe."
                    .to_owned(),
            ),
            Shown::Codes(codes),
        ),
        Err(error) => {
            let outcome = Outcome::failed("totp", failure(error));
            match state.accounts.pending_totp(&visitor.user).await {
                Ok(Some(enrollment)) => (outcome, Shown::Enrolling(enrollment)),
                Ok(None) => (outcome, Shown::Nothing),
                Err(error) => return error_page(failure(error)),
            }
        }
    };
    account_page(&state, &headers, None, outcome, shown).await
}

/// Turns TOTP off, proven with a code or a recovery code.
pub(super) async fn disable_totp(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "totp", async |visitor| {
        let factor = form.factor().ok_or(AccountError::SecondFactorRequired)?;
        state
            .accounts
            .disable_totp(&visitor.user, &visitor.session, &factor, &meta)
            .await?;
        Ok((
            "Codes from your authenticator app no longer sign you in.".to_owned(),
            Shown::Nothing,
        ))
    })
    .await
}

/// A new set of recovery codes (proven with a second factor), shown once; the old set dies.
pub(super) async fn renew_recovery_codes(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "codes", async |visitor| {
        let factor = form.factor().ok_or(AccountError::SecondFactorRequired)?;
        let codes = state
            .accounts
            .regenerate_recovery_codes(&visitor.user, &visitor.session, &factor, &meta)
            .await?;
        Ok((
            "New recovery codes replace the old ones, which no longer work.".to_owned(),
            Shown::Codes(codes),
        ))
    })
    .await
}

/// Begins adding a passkey (the password again, and the second factor if on): the page hands
/// the challenge to the console's script, which asks the authenticator.
pub(super) async fn begin_passkey(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "passkeys", async |visitor| {
        let challenge = state
            .accounts
            .begin_passkey_registration(
                &visitor.user,
                &visitor.session,
                form.password(),
                form.factor().as_ref(),
                &meta,
            )
            .await?;
        Ok((
            "Name the passkey, then add it: your browser asks for your security key or device.".to_owned(),
            Shown::Registering {
                challenge: challenge.into(),
                name: String::new(),
            },
        ))
    })
    .await
}

/// Finishes adding a passkey with the authenticator's answer. The first second factor of an
/// account turns two-factor authentication on, and its recovery codes are shown once.
pub(super) async fn add_passkey(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "passkeys", async |visitor| {
        let (passkey, codes) = state
            .accounts
            .finish_passkey_registration(
                &visitor.user,
                &visitor.session,
                &form.ceremony,
                form.passkey_name.trim(),
                passkey_answer(&form.credential)?,
                &meta,
            )
            .await?;
        let notice = format!(
            "The passkey {} was added: it signs you in as a second factor.",
            passkey.name
        );
        Ok(match codes {
            Some(codes) => (
                format!("{notice} Two-factor authentication is on; keep your recovery codes somewhere safe."),
                Shown::Codes(codes),
            ),
            None => (notice, Shown::Nothing),
        })
    })
    .await
}

/// The browser's answer to a passkey challenge, as the script put it in the form.
pub(super) fn passkey_answer(credential: &str) -> Result<serde_json::Value, AccountError> {
    if credential.is_empty() {
        return Err(AccountError::BadPasskey(
            "this browser sent no answer (a passkey needs JavaScript)".to_owned(),
        ));
    }
    serde_json::from_str(credential)
        .map_err(|error| AccountError::BadPasskey(format!("not a WebAuthn credential: {error}")))
}

/// Removes a passkey (the password again, and a second factor).
pub(super) async fn remove_passkey(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(passkey_id): Path<String>,
    Form(form): Form<AccountForm>,
) -> Response {
    change(&state, &headers, &form, "passkeys", async |visitor| {
        let id = passkey_id.parse().map_err(|_| AccountError::PasskeyNotFound)?;
        state
            .accounts
            .remove_passkey(
                &visitor.user,
                &visitor.session,
                id,
                form.password(),
                form.factor().as_ref(),
                &meta,
            )
            .await?;
        Ok(("The passkey was removed.".to_owned(), Shown::Nothing))
    })
    .await
}

/// Deletes the account: every session ends and the cookie goes; signing in within 30 days
/// offers to restore it.
pub(super) async fn delete_account(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AccountForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let deleted = state
        .accounts
        .delete_account(
            &visitor.user,
            &visitor.session,
            form.password(),
            form.factor().as_ref(),
            &meta,
        )
        .await;
    match deleted {
        Ok(purge_after) => {
            let message = format!(
                "Your account was deleted. Sign in before {} to restore it; after that its personal data is erased.",
                purge_after.format("%Y-%m-%d")
            );
            let mut response = super::links::done_page(&state, "Account deleted", message, "/sign-in", "Sign in");
            response
                .headers_mut()
                .append(header::SET_COOKIE, state.cookies.set("", 0));
            response
        }
        Err(error) => {
            account_page(
                &state,
                &headers,
                None,
                Outcome::failed("delete", failure(error)),
                Shown::Nothing,
            )
            .await
        }
    }
}
