//! The pages the account mails link to: verifying an address (`/verify-email#token=…`), asking
//! for a password reset (`/forgot-password`), choosing the new password
//! (`/reset-password#token=…`), confirming a new address (`/confirm-email-change#token=…`) and
//! stopping a change the owner did not ask for (`/report-email-change#token=…`). A link's token travels in the fragment, which browsers never send
//! to a server (nor in a `Referer`); the page moves it into its form, and nothing is spent until
//! the person presses the button (a mail scanner that opens links spends nothing).

use super::*;

/// A one-form page: its wording, what the form takes, and its outcome once sent.
#[derive(Template)]
#[template(path = "token_form.html")]
struct TokenPage {
    layout: Layout,
    heading: &'static str,
    explanation: &'static str,
    action: &'static str,
    button: &'static str,
    takes_token: bool,
    takes_email: bool,
    takes_password: bool,
    token: String,
    error: Option<String>,
    done: Option<String>,
    next_href: &'static str,
    next_label: &'static str,
}

impl std::ops::Deref for TokenPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

fn verify_page(state: &AppState) -> TokenPage {
    TokenPage {
        layout: Layout::new(state, String::new()),
        heading: "Verify your email address",
        explanation: "Confirm that this address is yours.",
        action: "/verify-email",
        button: "Verify my address",
        takes_token: true,
        takes_email: false,
        takes_password: false,
        token: String::new(),
        error: None,
        done: None,
        next_href: "/console",
        next_label: "Open the console",
    }
}

fn forgot_page(state: &AppState) -> TokenPage {
    TokenPage {
        layout: Layout::new(state, String::new()),
        heading: "Reset your password",
        explanation: "Give your account's address: we send it a link to choose a new password.",
        action: "/forgot-password",
        button: "Send the link",
        takes_token: false,
        takes_email: true,
        takes_password: false,
        token: String::new(),
        error: None,
        done: None,
        next_href: "/sign-in",
        next_label: "Back to sign in",
    }
}

fn reset_page(state: &AppState) -> TokenPage {
    TokenPage {
        layout: Layout::new(state, String::new()),
        heading: "Choose a new password",
        explanation: "Your other sessions are signed out when the password changes.",
        action: "/reset-password",
        button: "Set the password",
        takes_token: true,
        takes_email: false,
        takes_password: true,
        token: String::new(),
        error: None,
        done: None,
        next_href: "/sign-in",
        next_label: "Sign in",
    }
}

/// A page whose form only sends the link's token.
fn token_only(
    state: &AppState,
    heading: &'static str,
    explanation: &'static str,
    action: &'static str,
    button: &'static str,
) -> TokenPage {
    TokenPage {
        heading,
        explanation,
        action,
        button,
        ..verify_page(state)
    }
}

fn confirm_change_page(state: &AppState) -> TokenPage {
    token_only(
        state,
        "Confirm your new email address",
        "Confirm that this address is yours: the account's address changes to it.",
        "/confirm-email-change",
        "Confirm the new address",
    )
}

fn report_change_page(state: &AppState) -> TokenPage {
    token_only(
        state,
        "Stop this email change",
        "If you did not ask to change your account's address, stop it: the change is cancelled, your sessions \
         are signed out, and you should reset your password.",
        "/report-email-change",
        "Stop the change",
    )
}

pub(super) async fn confirm_email_change_page(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, &confirm_change_page(&state))
}

pub(super) async fn report_email_change_page(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, &report_change_page(&state))
}

/// A page saying that something is done (`heading`, `message`), with one link on.
pub(super) fn done_page(
    state: &AppState,
    heading: &'static str,
    message: String,
    next_href: &'static str,
    next_label: &'static str,
) -> Response {
    let page = TokenPage {
        layout: Layout::new(state, String::new()),
        heading,
        explanation: "",
        action: "",
        button: "",
        takes_token: false,
        takes_email: false,
        takes_password: false,
        token: String::new(),
        error: None,
        done: Some(message),
        next_href,
        next_label,
    };
    html(StatusCode::OK, &page)
}

/// `page` with how an action went: its `done` message, or the failure (the JSON API's status
/// and text) above the form again.
fn outcome_page(mut page: TokenPage, outcome: Result<String, AccountError>) -> Response {
    let status = match outcome {
        Ok(done) => {
            page.done = Some(done);
            StatusCode::OK
        }
        Err(error) => {
            let (status, message) = failure(error);
            page.error = Some(message);
            status
        }
    };
    html(status, &page)
}

pub(super) async fn confirm_email_change(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<TokenForm>,
) -> Response {
    let outcome = state.accounts.confirm_email_change(&form.token, &meta).await;
    outcome_page(
        confirm_change_page(&state),
        outcome.map(|()| "The account's address was changed.".to_owned()),
    )
}

pub(super) async fn report_email_change(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<TokenForm>,
) -> Response {
    let outcome = state.accounts.report_email_change(&form.token, &meta).await;
    let page = TokenPage {
        next_href: "/forgot-password",
        next_label: "Reset the password",
        ..report_change_page(&state)
    };
    outcome_page(
        page,
        outcome.map(|()| "The change was stopped and your sessions were signed out.".to_owned()),
    )
}

pub(super) async fn verify_email_page(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, &verify_page(&state))
}

#[derive(Deserialize)]
pub(super) struct TokenForm {
    token: String,
}

pub(super) async fn verify_email(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<TokenForm>,
) -> Response {
    let outcome = state.accounts.verify_email(&form.token, &meta).await;
    outcome_page(
        verify_page(&state),
        outcome.map(|user| format!("{} is verified.", user.email.as_ref())),
    )
}

pub(super) async fn forgot_password_page(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, &forgot_page(&state))
}

#[derive(Deserialize)]
pub(super) struct EmailForm {
    email: String,
}

/// Always the same answer, whether the address has an account or not.
pub(super) async fn forgot_password(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<EmailForm>,
) -> Response {
    let outcome = state.accounts.request_password_reset(&form.email, &meta).await;
    outcome_page(
        forgot_page(&state),
        outcome.map(|()| {
            "If an account signs in with this address and a password, a link to reset it is on its way. It works for \
             60 minutes."
                .to_owned()
        }),
    )
}

pub(super) async fn reset_password_page(State(state): State<AppState>) -> Response {
    html(StatusCode::OK, &reset_page(&state))
}

#[derive(Deserialize)]
pub(super) struct ResetForm {
    token: String,
    password: String,
    #[serde(default)]
    code: String,
}

pub(super) async fn reset_password(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    Form(form): Form<ResetForm>,
) -> Response {
    let code = form.code.trim();
    let factor = (!code.is_empty()).then(|| second_factor_of(code));
    let outcome = state
        .accounts
        .reset_password(&form.token, &form.password, factor.as_ref(), &meta)
        .await;
    // On a failure the link can be tried again (it is spent only on success): the form keeps it.
    let page = TokenPage {
        token: form.token,
        ..reset_page(&state)
    };
    outcome_page(
        page,
        outcome.map(|()| "Your password was changed. Sign in with it.".to_owned()),
    )
}
