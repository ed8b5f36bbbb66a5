//! Teams: creating, renaming and deleting them, members and invitations, verified domains, the
//! audit log and how the team's data may be used.

use super::*;

/// A team, as its members see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TeamView {
    team_id: String,
    name: String,
    description: Option<String>,
    personal: bool,
    create_time: String,
}

impl TeamView {
    fn new(team: &tollgate_domain::Team) -> Self {
        Self {
            team_id: team.id.to_string(),
            name: team.name.clone(),
            description: team.description.clone(),
            personal: team.personal,
            create_time: rfc3339(team.created_at),
        }
    }
}

/// `POST /api/teams` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateTeamRequest {
    name: String,
    description: Option<String>,
}

/// Create a team; you are its Admin.
#[utoipa::path(post, path = "/api/teams", tag = "console", request_body = CreateTeamRequest,
    responses((status = 201, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn create_team(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<CreateTeamRequest>,
) -> Result<(StatusCode, Json<TeamView>), XaiError> {
    let team = state
        .teams
        .create_team(&signed_in.user, &body.name, body.description.as_deref(), &meta)
        .await?;
    Ok((StatusCode::CREATED, Json(TeamView::new(&team))))
}

/// The team (members).
#[utoipa::path(get, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = TeamView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn get_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<TeamView>, XaiError> {
    Ok(Json(TeamView::new(&state.teams.team(&caller).await?)))
}

/// `PATCH /api/teams/{team_id}` body: what to change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateTeamRequest {
    name: Option<String>,
    /// `null` clears it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// Rename or describe the team (Admins).
#[utoipa::path(patch, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = UpdateTeamRequest,
    responses((status = 200, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn update_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<UpdateTeamRequest>,
) -> Result<Json<TeamView>, XaiError> {
    let description = body.description.as_ref().map(|d| d.as_deref());
    let team = state
        .teams
        .update_team(&caller, body.name.as_deref(), description, &meta)
        .await?;
    Ok(Json(TeamView::new(&team)))
}

/// `DELETE /api/teams/{team_id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct DeleteTeamRequest {
    /// The team's name, typed exactly.
    confirm_name: String,
}

/// Delete the team (Admins), confirmed by typing its name: its API keys and management keys stop
/// working at once; its prepaid credits are forfeited; invoices and audit records are kept. A
/// Personal Team goes only with its account.
#[utoipa::path(delete, path = "/api/teams/{team_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = DeleteTeamRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn delete_team(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<DeleteTeamRequest>,
) -> Result<StatusCode, XaiError> {
    state.teams.delete_team(&caller, &body.confirm_name, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A member.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MemberView {
    user_id: String,
    email: String,
    name: String,
    /// `admin` or `member`.
    role: &'static str,
    join_time: String,
    /// How the member's account signs in (`password`, each provider's name): accounts may share
    /// an address, and this tells them apart.
    sign_in_methods: Vec<String>,
}

impl MemberView {
    fn new(member: &tollgate_domain::Member) -> Self {
        Self {
            user_id: member.user_id.to_string(),
            email: member.email.as_ref().to_owned(),
            name: member.display_name.clone(),
            role: member.role.as_str(),
            join_time: rfc3339(member.joined_at),
            sign_in_methods: member.sign_in_methods.clone(),
        }
    }
}

/// Members.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MemberListView {
    members: Vec<MemberView>,
}

/// The team's members (members).
#[utoipa::path(get, path = "/api/teams/{team_id}/members", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = MemberListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_members(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<MemberListView>, XaiError> {
    let members = state.teams.members(&caller).await?;
    Ok(Json(MemberListView {
        members: members.iter().map(MemberView::new).collect(),
    }))
}

fn parse_role(raw: &str) -> Result<tollgate_domain::Role, XaiError> {
    raw.parse()
        .map_err(|e: tollgate_domain::role::RoleError| XaiError::invalid_argument(e.to_string()))
}

/// `POST /api/teams/{team_id}/members` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddMemberRequest {
    email: String,
    /// `admin` or `member`.
    role: String,
}

/// An invitation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InvitationView {
    invitation_id: String,
    email: String,
    role: &'static str,
    create_time: String,
    expire_time: String,
}

impl InvitationView {
    fn new(invitation: &tollgate_domain::Invitation) -> Self {
        Self {
            invitation_id: invitation.id.to_string(),
            email: invitation.email.as_ref().to_owned(),
            role: invitation.role.as_str(),
            create_time: rfc3339(invitation.created_at),
            expire_time: rfc3339(invitation.expires_at),
        }
    }
}

/// What adding by email did: an invitation, always (whether the address has an account is not
/// said).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AddedView {
    invitation: InvitationView,
}

/// Add someone by email (Admins): the address gets an emailed invitation (202), whether or not
/// it has an account; an account that has verified the address joins by accepting it. A new
/// invitation to the same address replaces the pending one.
#[utoipa::path(post, path = "/api/teams/{team_id}/members", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = AddMemberRequest,
    responses((status = 202, body = AddedView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn add_team_member(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<AddMemberRequest>,
) -> Result<(StatusCode, Json<AddedView>), XaiError> {
    let role = parse_role(&body.role)?;
    let invitation = state.teams.add_member(&caller, &body.email, role, &meta).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AddedView {
            invitation: InvitationView::new(&invitation),
        }),
    ))
}

fn path_user(params: &std::collections::HashMap<String, String>) -> Result<tollgate_domain::UserId, XaiError> {
    params
        .get("user_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such member"))
}

/// `PATCH /api/teams/{team_id}/members/{user_id}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeRoleRequest {
    /// `admin` or `member`.
    role: String,
}

/// Change a member's role (Admins). The team keeps at least one Admin.
#[utoipa::path(patch, path = "/api/teams/{team_id}/members/{user_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("user_id" = String, Path, description = "The member's user id")),
    request_body = ChangeRoleRequest,
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn change_member_role(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<ChangeRoleRequest>,
) -> Result<StatusCode, XaiError> {
    let role = parse_role(&body.role)?;
    state
        .teams
        .change_role(&caller, path_user(&params)?, role, &meta)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Remove a member (Admins), or leave the team (yourself). Their API keys stay with the team and
/// keep working. The team keeps at least one Admin.
#[utoipa::path(delete, path = "/api/teams/{team_id}/members/{user_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("user_id" = String, Path, description = "The member's user id")),
    responses((status = 204), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_team_member(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    state.teams.remove_member(&caller, path_user(&params)?, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Invitations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InvitationListView {
    invitations: Vec<InvitationView>,
}

/// Pending invitations (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/invitations", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = InvitationListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_invitations(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<InvitationListView>, XaiError> {
    let invitations = state.teams.invitations(&caller).await?;
    Ok(Json(InvitationListView {
        invitations: invitations.iter().map(InvitationView::new).collect(),
    }))
}

/// Withdraw a pending invitation (Admins).
#[utoipa::path(delete, path = "/api/teams/{team_id}/invitations/{invitation_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("invitation_id" = String, Path, description = "The invitation's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn revoke_team_invitation(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    let id = params
        .get("invitation_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such invitation"))?;
    state.teams.revoke_invitation(&caller, id, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation with the token from its emailed link, as the invited address's account.
#[utoipa::path(post, path = "/api/invitations/accept", tag = "console", request_body = TokenRequest,
    responses((status = 200, body = TeamView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn accept_invitation(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<TokenRequest>,
) -> Result<Json<TeamView>, XaiError> {
    let team = state
        .teams
        .accept_invitation(&signed_in.user, &body.token, &meta)
        .await?;
    Ok(Json(TeamView::new(&team)))
}

/// An invitation waiting for the signed-in account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MyInvitationView {
    invitation_id: String,
    team_id: String,
    team_name: String,
    role: &'static str,
    expire_time: String,
}

/// Invitations waiting for the signed-in account.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MyInvitationListView {
    invitations: Vec<MyInvitationView>,
}

/// The invitations waiting for the signed-in account's address (none until it is verified).
#[utoipa::path(get, path = "/api/invitations", tag = "console",
    responses((status = 200, body = MyInvitationListView), (status = 401, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn my_invitations(
    State(state): State<AppState>,
    signed_in: SignedInUser,
) -> Result<Json<MyInvitationListView>, XaiError> {
    let pending = state.teams.my_invitations(&signed_in.user).await?;
    Ok(Json(MyInvitationListView {
        invitations: pending
            .iter()
            .map(|(invitation, team)| MyInvitationView {
                invitation_id: invitation.id.to_string(),
                team_id: team.id.to_string(),
                team_name: team.name.clone(),
                role: invitation.role.as_str(),
                expire_time: rfc3339(invitation.expires_at),
            })
            .collect(),
    }))
}

/// Accept an invitation waiting for the signed-in account's verified address.
#[utoipa::path(post, path = "/api/invitations/{invitation_id}/accept", tag = "console",
    params(("invitation_id" = String, Path, description = "The invitation's id")),
    responses((status = 200, body = TeamView), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn accept_my_invitation(
    State(state): State<AppState>,
    signed_in: SignedInUser,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<TeamView>, XaiError> {
    let id = params
        .get("invitation_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such invitation"))?;
    let team = state.teams.accept_invitation_by_id(&signed_in.user, id, &meta).await?;
    Ok(Json(TeamView::new(&team)))
}

/// A domain of the team, and the DNS record that verifies it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DomainView {
    domain_id: String,
    domain: String,
    verified: bool,
    /// Publish a TXT record with this value...
    record_value: String,
    /// ...at this name (preferred), or at the domain itself.
    record_name: String,
    verify_time: Option<String>,
    check_time: Option<String>,
    /// Why the last lookup did not verify it.
    last_error: Option<String>,
}

impl DomainView {
    fn new(domain: &tollgate_domain::TeamDomain) -> Self {
        let [preferred, _] = tollgate_domain::domains::record_names(&domain.domain);
        Self {
            domain_id: domain.id.to_string(),
            domain: domain.domain.clone(),
            verified: domain.verified_at.is_some(),
            record_value: tollgate_domain::domains::record_value(&domain.token),
            record_name: preferred,
            verify_time: domain.verified_at.map(rfc3339),
            check_time: domain.checked_at.map(rfc3339),
            last_error: domain.last_error.clone(),
        }
    }
}

/// Domains.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DomainListView {
    domains: Vec<DomainView>,
}

/// The team's domains (Admins).
#[utoipa::path(get, path = "/api/teams/{team_id}/domains", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = DomainListView), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_domains(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<DomainListView>, XaiError> {
    let domains = state.teams.domains(&caller).await?;
    Ok(Json(DomainListView {
        domains: domains.iter().map(DomainView::new).collect(),
    }))
}

/// `POST /api/teams/{team_id}/domains` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddDomainRequest {
    domain: String,
}

/// Add a domain to verify (Admins): publish the returned TXT record, then ask for a check. Once
/// verified, everyone who signs up and verifies an address at the domain joins as a Member.
#[utoipa::path(post, path = "/api/teams/{team_id}/domains", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = AddDomainRequest,
    responses((status = 201, body = DomainView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn add_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<AddDomainRequest>,
) -> Result<(StatusCode, Json<DomainView>), XaiError> {
    let domain = state.teams.add_domain(&caller, &body.domain, &meta).await?;
    Ok((StatusCode::CREATED, Json(DomainView::new(&domain))))
}

fn path_domain(params: &std::collections::HashMap<String, String>) -> Result<tollgate_domain::DomainId, XaiError> {
    params
        .get("domain_id")
        .and_then(|raw| raw.parse().ok())
        .ok_or_else(|| XaiError::not_found("no such domain"))
}

/// Look the domain's TXT record up now (Admins).
#[utoipa::path(post, path = "/api/teams/{team_id}/domains/{domain_id}/verify", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("domain_id" = String, Path, description = "The domain's id")),
    responses((status = 200, body = DomainView), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody), (status = 409, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn verify_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<Json<DomainView>, XaiError> {
    let domain = state.teams.verify_domain(&caller, path_domain(&params)?, &meta).await?;
    Ok(Json(DomainView::new(&domain)))
}

/// Remove a domain from the team (Admins).
#[utoipa::path(delete, path = "/api/teams/{team_id}/domains/{domain_id}", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ("domain_id" = String, Path, description = "The domain's id")),
    responses((status = 204), (status = 403, body = crate::ErrorBody), (status = 404, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn remove_team_domain(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    Path(params): Path<std::collections::HashMap<String, String>>,
    RequestMeta(meta): RequestMeta,
) -> Result<StatusCode, XaiError> {
    state.teams.remove_domain(&caller, path_domain(&params)?, &meta).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Search the team's audit log (Admins), with the Management API's query parameters.
#[utoipa::path(get, path = "/api/teams/{team_id}/audit/events", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), EventsQuery),
    responses((status = 200, body = AuditEventListView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_audit_events(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditEventListView>, XaiError> {
    crate::audit::search(&state, &caller, caller.team_id(), &meta, query_or_400(query)?).await
}

/// Export the team's audit log (Admins) as CSV or JSON lines.
#[utoipa::path(get, path = "/api/teams/{team_id}/audit/events/export", tag = "console",
    params(("team_id" = String, Path, description = "The team's id"), ExportFormatQuery, EventsQuery),
    responses((status = 200, description = "The file"), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_audit_export(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    format: Result<Query<ExportFormatQuery>, axum::extract::rejection::QueryRejection>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, XaiError> {
    let (format, filter) = export_request(format, query)?;
    let team_id = caller.team_id();
    let export = state
        .audit
        .export(&caller, team_id, filter, format.name(), &meta)
        .await?;
    Ok(export_response(export, format, team_id))
}

/// How the team's data may be used.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DataUseView {
    /// Its Admins allow its requests and answers to be used for training (off by default).
    training_allowed: bool,
    /// The operator granted zero retention: no request bodies kept, the Responses API stores
    /// nothing (`store: true` and `previous_response_id` are refused), a deferred result is
    /// gone once fetched.
    zero_retention: bool,
}

impl From<tollgate_domain::DataUse> for DataUseView {
    fn from(data_use: tollgate_domain::DataUse) -> Self {
        Self {
            training_allowed: data_use.training_allowed,
            zero_retention: data_use.zero_retention,
        }
    }
}

/// `PUT /api/teams/{team_id}/data-use` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SetDataUseRequest {
    /// Allow training on the team's requests and answers.
    training_allowed: bool,
}

/// How the team's data may be used (every member may read it).
#[utoipa::path(get, path = "/api/teams/{team_id}/data-use", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")),
    responses((status = 200, body = DataUseView), (status = 401, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_data_use(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
) -> Result<Json<DataUseView>, XaiError> {
    Ok(Json(state.teams.data_use(&caller).await?.into()))
}

/// Allow or refuse training on the team's requests and answers (Admins; audited). Zero
/// retention is the operator's to grant (`tollgate team zero-retention`).
#[utoipa::path(put, path = "/api/teams/{team_id}/data-use", tag = "console",
    params(("team_id" = String, Path, description = "The team's id")), request_body = SetDataUseRequest,
    responses((status = 200, body = DataUseView), (status = 400, body = crate::ErrorBody), (status = 403, body = crate::ErrorBody)),
    security(("session" = [])))]
pub(crate) async fn team_set_data_use(
    State(state): State<AppState>,
    TeamMember(caller): TeamMember,
    RequestMeta(meta): RequestMeta,
    XaiJson(body): XaiJson<SetDataUseRequest>,
) -> Result<Json<DataUseView>, XaiError> {
    let data_use = state
        .teams
        .set_training_allowed(&caller, body.training_allowed, &meta)
        .await?;
    Ok(Json(data_use.into()))
}
