//! The console's Users page: the team's members with their sign-in methods; Admins invite by
//! address, remove members and withdraw invitations.

use super::*;

/// A member as the Users table shows them.
struct MemberRow {
    id: String,
    name: String,
    email: String,
    methods: String,
    role: &'static str,
    joined: String,
}

/// A pending invitation as the table shows it.
struct InvitationRow {
    id: String,
    email: String,
    role: &'static str,
    expires: String,
}

#[derive(Template)]
#[template(path = "users_fragment.html")]
struct UsersFragment {
    team_id: String,
    me: String,
    is_admin: bool,
    members: Vec<MemberRow>,
    invitations: Vec<InvitationRow>,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    frame: Frame,
    is_admin: bool,
    users: String,
}

impl std::ops::Deref for UsersPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// The members (and, for Admins, the pending invitations) of `caller`'s team.
async fn users_fragment(
    state: &AppState,
    caller: &tollgate_core::Caller,
    error: Option<String>,
    notice: Option<String>,
) -> Result<UsersFragment, tollgate_core::TeamError> {
    let is_admin = caller.allows(Permission::ManageMembers);
    let members = state.teams.members(caller).await?;
    let invitations = if is_admin {
        state.teams.invitations(caller).await?
    } else {
        Vec::new()
    };
    Ok(UsersFragment {
        team_id: caller.team_id().to_string(),
        me: caller.user_id().map(|id| id.to_string()).unwrap_or_default(),
        is_admin,
        members: members
            .iter()
            .map(|member| MemberRow {
                id: member.user_id.to_string(),
                name: member.display_name.clone(),
                email: member.email.as_ref().to_owned(),
                methods: member.sign_in_methods.join(", "),
                role: if member.role == Role::Admin { "Admin" } else { "Member" },
                joined: member.joined_at.format("%Y-%m-%d").to_string(),
            })
            .collect(),
        invitations: invitations
            .iter()
            .map(|invitation| InvitationRow {
                id: invitation.id.to_string(),
                email: invitation.email.as_ref().to_owned(),
                role: if invitation.role == Role::Admin {
                    "Admin"
                } else {
                    "Member"
                },
                expires: invitation.expires_at.format("%Y-%m-%d").to_string(),
            })
            .collect(),
        error,
        notice,
    })
}

/// The console's Users page: the team's members with their sign-in methods; Admins invite by
/// address, remove members and withdraw invitations.
pub(super) async fn users(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let context = match context(&state, &headers, query.team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let fragment = match users_fragment(&state, &context.caller, None, None).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let users_html = match rendered(&fragment) {
        Some(body) => body,
        None => return unrendered(),
    };
    let page = UsersPage {
        frame: context.frame(&state, "/console/users"),
        is_admin: fragment.is_admin,
        users: users_html,
    };
    console_page(&state, context.team_id, &page)
}

/// The Users fragment after a change (`done`), or with its failure.
async fn users_response(
    state: &AppState,
    caller: &tollgate_core::Caller,
    done: Result<Option<String>, tollgate_core::TeamError>,
) -> Response {
    let (status, error, notice) = match done {
        Ok(notice) => (StatusCode::OK, None, notice),
        Err(error) => {
            let (status, message) = failure(error);
            (status, Some(message), None)
        }
    };
    match users_fragment(state, caller, error, notice).await {
        Ok(fragment) => html(status, &fragment),
        Err(error) => fragment_error("users", failure(error)),
    }
}

#[derive(Deserialize)]
pub(super) struct InviteForm {
    email: String,
    role: String,
}

pub(super) async fn invite(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<InviteForm>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(problem) => return fragment_error("users", problem),
    };
    let role = if form.role == "admin" {
        Role::Admin
    } else {
        Role::Member
    };
    let done = state
        .teams
        .add_member(&caller, &form.email, role, &meta)
        .await
        .map(|invitation| Some(format!("An invitation was sent to {}.", invitation.email.as_ref())));
    users_response(&state, &caller, done).await
}

pub(super) async fn remove_member(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, user_id)): Path<(String, String)>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(problem) => return fragment_error("users", problem),
    };
    let Ok(user_id) = user_id.parse::<UserId>() else {
        return fragment_error("users", (StatusCode::NOT_FOUND, "No such member".into()));
    };
    let done = state
        .teams
        .remove_member(&caller, user_id, &meta)
        .await
        .map(|()| Some("The member was removed.".to_owned()));
    users_response(&state, &caller, done).await
}

pub(super) async fn withdraw_invitation(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, invitation_id)): Path<(String, String)>,
) -> Response {
    let caller = match member_of(&state, &headers, &team_id).await {
        Ok(caller) => caller,
        Err(problem) => return fragment_error("users", problem),
    };
    let Ok(invitation_id) = invitation_id.parse::<InvitationId>() else {
        return fragment_error("users", (StatusCode::NOT_FOUND, "No such invitation".into()));
    };
    let done = state
        .teams
        .revoke_invitation(&caller, invitation_id, &meta)
        .await
        .map(|()| Some("The invitation was withdrawn.".to_owned()));
    users_response(&state, &caller, done).await
}
