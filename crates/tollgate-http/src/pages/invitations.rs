//! Joining a team: the page the invitation mail links to (`/accept-invitation#token=…`: the
//! token moves from the fragment into the form and is spent only when the invited person, signed
//! in with the invited address verified, presses Accept), and the same page's list of every
//! invitation waiting for the signed-in address, each accepted with one press.

use tollgate_domain::InvitationId;

use super::*;

struct Waiting {
    id: String,
    team: String,
    role: &'static str,
    expires: String,
}

#[derive(Template)]
#[template(path = "invitations.html")]
struct InvitationsPage {
    layout: Layout,
    signed_in: bool,
    email: String,
    verified: bool,
    waiting: Vec<Waiting>,
    error: Option<String>,
}

impl std::ops::Deref for InvitationsPage {
    type Target = Layout;
    fn deref(&self) -> &Layout {
        &self.layout
    }
}

/// `/accept-invitation`.
pub(super) async fn invitations(State(state): State<AppState>, headers: HeaderMap) -> Response {
    invitations_page(&state, &headers, StatusCode::OK, None).await
}

async fn invitations_page(
    state: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let Some(visitor) = visitor(state, headers).await else {
        let page = InvitationsPage {
            layout: Layout::new(state, String::new()),
            signed_in: false,
            email: String::new(),
            verified: false,
            waiting: Vec::new(),
            error,
        };
        return html(status, &page);
    };
    let waiting = match state.teams.my_invitations(&visitor.user).await {
        Ok(waiting) => waiting,
        Err(error) => return error_page(failure(error)),
    };
    let page = InvitationsPage {
        layout: Layout::new(state, visitor.csrf.clone()),
        signed_in: true,
        email: visitor.user.email.as_ref().to_owned(),
        verified: visitor.user.email_verified_at.is_some(),
        waiting: waiting
            .iter()
            .map(|(invitation, team)| Waiting {
                id: invitation.id.to_string(),
                team: team.name.clone(),
                role: if invitation.role == Role::Admin {
                    "Admin"
                } else {
                    "Member"
                },
                expires: invitation.expires_at.format("%Y-%m-%d").to_string(),
            })
            .collect(),
        error,
    };
    html(status, &page)
}

#[derive(Deserialize)]
pub(super) struct AcceptForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Joins the team of the mailed invitation; the console then shows it.
pub(super) async fn accept(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<AcceptForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => {
            let (status, message) = failure(error);
            return invitations_page(&state, &headers, status, Some(message)).await;
        }
    };
    match state.teams.accept_invitation(&visitor.user, &form.token, &meta).await {
        Ok(team) => Redirect::to(&format!("/console?team={}", team.id)).into_response(),
        Err(error) => {
            let (status, message) = failure(error);
            invitations_page(&state, &headers, status, Some(message)).await
        }
    }
}

/// Joins the team of one of the invitations waiting for the signed-in address.
pub(super) async fn accept_waiting(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(invitation_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let Ok(id) = invitation_id.parse::<InvitationId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such invitation".into()));
    };
    match state.teams.accept_invitation_by_id(&visitor.user, id, &meta).await {
        Ok(team) => Redirect::to(&format!("/console?team={}", team.id)).into_response(),
        Err(error) => {
            let (status, message) = failure(error);
            invitations_page(&state, &headers, status, Some(message)).await
        }
    }
}
