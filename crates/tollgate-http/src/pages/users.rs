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
    csrf: String,
    /// The member whose removal a plain form asks to confirm (empty: none).
    confirming: String,
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
    (caller, csrf): (&tollgate_core::Caller, &str),
    error: Option<String>,
    notice: Option<String>,
    confirming: Option<UserId>,
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
        csrf: csrf.to_owned(),
        confirming: confirming.map(|id| id.to_string()).unwrap_or_default(),
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
    users_page(&state, &headers, query.team, StatusCode::OK, (None, None, None)).await
}

/// What the table shows after a change: an error, a notice, a removal to confirm.
type UsersAnswer = (Option<String>, Option<String>, Option<UserId>);

/// The whole page, showing `answer` (for a plain form's change, with `status`).
async fn users_page(
    state: &AppState,
    headers: &HeaderMap,
    team: Option<String>,
    status: StatusCode,
    (error, notice, confirming): UsersAnswer,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let member = (&context.caller, context.visitor.csrf.as_str());
    let fragment = match users_fragment(state, member, error, notice, confirming).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let Some(users_html) = rendered(&fragment) else {
        return unrendered();
    };
    let page = UsersPage {
        frame: context.frame(state, "/console/users"),
        is_admin: fragment.is_admin,
        users: users_html,
    };
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

/// The answer to a change (`done`: its notice, or why it failed): the Users fragment for htmx,
/// the whole page for a plain form.
async fn users_response(
    state: &AppState,
    headers: &HeaderMap,
    member: (&tollgate_core::Caller, &str),
    done: Result<Option<String>, tollgate_core::TeamError>,
    confirming: Option<UserId>,
) -> Response {
    let (status, error, notice) = match done {
        Ok(notice) => (StatusCode::OK, None, notice),
        Err(error) => {
            let (status, message) = failure(error);
            (status, Some(message), None)
        }
    };
    if !from_htmx(headers) {
        let team = Some(member.0.team_id().to_string());
        return users_page(state, headers, team, status, (error, notice, confirming)).await;
    }
    match users_fragment(state, member, error, notice, confirming).await {
        Ok(fragment) => html(status, &fragment),
        Err(error) => fragment_error("users", failure(error)),
    }
}

#[derive(Deserialize)]
pub(super) struct InviteForm {
    email: String,
    role: String,
    #[serde(default)]
    csrf: Option<String>,
}

pub(super) async fn invite(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<InviteForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "users", problem),
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
    users_response(&state, &headers, (&caller, &csrf), done, None).await
}

/// Removes a member (from a plain form, after confirming).
pub(super) async fn remove_member(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, user_id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "users", problem),
    };
    let member = (&caller, csrf.as_str());
    let Ok(user_id) = user_id.parse::<UserId>() else {
        let missing = Err(tollgate_core::TeamError::NotAMember);
        return users_response(&state, &headers, member, missing, None).await;
    };
    if !form.confirmed() {
        return users_response(&state, &headers, member, Ok(None), Some(user_id)).await;
    }
    let done = state
        .teams
        .remove_member(&caller, user_id, &meta)
        .await
        .map(|()| Some("The member was removed.".to_owned()));
    users_response(&state, &headers, member, done, None).await
}

pub(super) async fn withdraw_invitation(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, invitation_id)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "users", problem),
    };
    let member = (&caller, csrf.as_str());
    let done = match invitation_id.parse::<InvitationId>() {
        Ok(invitation_id) => state
            .teams
            .revoke_invitation(&caller, invitation_id, &meta)
            .await
            .map(|()| Some("The invitation was withdrawn.".to_owned())),
        Err(_) => Err(tollgate_core::TeamError::InvitationNotFound),
    };
    users_response(&state, &headers, member, done, None).await
}

#[derive(Deserialize)]
pub(super) struct RoleForm {
    role: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Makes a member an Admin or a Member (one who stops being an Admin loses the management keys
/// they made; the service revokes them and tells the other Admins).
pub(super) async fn change_role(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, user_id)): Path<(String, String)>,
    Form(form): Form<RoleForm>,
) -> Response {
    let (caller, csrf) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return refused_change(&headers, "users", problem),
    };
    let member = (&caller, csrf.as_str());
    let Ok(user_id) = user_id.parse::<UserId>() else {
        let missing = Err(tollgate_core::TeamError::NotAMember);
        return users_response(&state, &headers, member, missing, None).await;
    };
    let role = match form.role.as_str() {
        "admin" => Role::Admin,
        "member" => Role::Member,
        _ => {
            let problem = (StatusCode::BAD_REQUEST, "The role is Admin or Member".to_owned());
            return refused_change(&headers, "users", problem);
        }
    };
    let done = state.teams.change_role(&caller, user_id, role, &meta).await.map(|()| {
        Some(match role {
            Role::Admin => "The member is now an Admin.".to_owned(),
            Role::Member => "The member is now a Member; the management keys they made were revoked.".to_owned(),
        })
    });
    users_response(&state, &headers, member, done, None).await
}
