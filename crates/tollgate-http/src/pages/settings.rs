//! The team's Settings page: its name and description, its Verified Domains (the TXT record to
//! publish, copyable, and its status; check now, remove), and deleting it (its name typed to
//! confirm). Admins change them; Members see them. Plain forms, answered with the whole page.

use super::*;

/// A domain as the Verified Domains table shows it.
struct DomainRow {
    id: String,
    domain: String,
    verified: bool,
    record_name: String,
    record_value: String,
    checked: String,
    last_error: Option<String>,
}

impl DomainRow {
    fn new(domain: &tollgate_domain::TeamDomain) -> Self {
        let [preferred, _] = tollgate_domain::domains::record_names(&domain.domain);
        Self {
            id: domain.id.to_string(),
            domain: domain.domain.clone(),
            verified: domain.verified_at.is_some(),
            record_name: preferred,
            record_value: tollgate_domain::domains::record_value(&domain.token),
            checked: domain
                .checked_at
                .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
                .unwrap_or_else(|| "not yet".to_owned()),
            last_error: domain.last_error.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    frame: Frame,
    is_admin: bool,
    personal: bool,
    name: String,
    description: String,
    domains: Vec<DomainRow>,
    outcome: Outcome,
}

impl std::ops::Deref for SettingsPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/console/settings`.
pub(super) async fn settings(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    settings_page(&state, &headers, query.team, Outcome::default()).await
}

async fn settings_page(state: &AppState, headers: &HeaderMap, team: Option<String>, outcome: Outcome) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let is_admin = context.caller.allows(Permission::ManageTeam);
    let team = match state.teams.team(&context.caller).await {
        Ok(team) => team,
        Err(error) => return error_page(failure(error)),
    };
    let domains = if is_admin {
        match state.teams.domains(&context.caller).await {
            Ok(domains) => domains.iter().map(DomainRow::new).collect(),
            Err(error) => return error_page(failure(error)),
        }
    } else {
        Vec::new()
    };
    let status = outcome.status();
    let page = SettingsPage {
        frame: context.frame(state, "/console/settings"),
        is_admin,
        personal: team.personal,
        name: team.name,
        description: team.description.unwrap_or_default(),
        domains,
        outcome,
    };
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

#[derive(Deserialize)]
pub(super) struct TeamForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Renames or describes the team.
pub(super) async fn update_team(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<TeamForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let description = form.description.trim();
    let done = state
        .teams
        .update_team(
            &caller,
            Some(form.name.trim()),
            Some(Some(description).filter(|d| !d.is_empty())),
            &meta,
        )
        .await;
    let done = done.map(|_| "The team's name and description were saved.".to_owned());
    let outcome = Outcome::of(done, "team");
    settings_page(&state, &headers, Some(team_id), outcome).await
}

#[derive(Deserialize)]
pub(super) struct DomainForm {
    domain: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Adds a domain to verify: the page then shows the TXT record to publish.
pub(super) async fn add_domain(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<DomainForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let done = state
        .teams
        .add_domain(&caller, form.domain.trim(), &meta)
        .await
        .map(|domain| format!("Publish the TXT record below for {}, then check it.", domain.domain));
    let outcome = Outcome::of(done, "domains");
    settings_page(&state, &headers, Some(team_id), outcome).await
}

/// Checks a domain's record now, or removes the domain.
pub(super) async fn change_domain(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path((team_id, domain_id, action)): Path<(String, String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    let Ok(domain_id) = domain_id.parse::<tollgate_domain::DomainId>() else {
        return error_page((StatusCode::NOT_FOUND, "No such domain".into()));
    };
    let done = match action.as_str() {
        "check" => state
            .teams
            .verify_domain(&caller, domain_id, &meta)
            .await
            .map(|domain| match (&domain.verified_at, &domain.last_error) {
                (Some(_), _) => format!("{} is verified.", domain.domain),
                (None, Some(error)) => format!("{} is not verified yet: {error}", domain.domain),
                (None, None) => format!("{} is not verified yet.", domain.domain),
            }),
        "remove" => state
            .teams
            .remove_domain(&caller, domain_id, &meta)
            .await
            .map(|()| "The domain was removed.".to_owned()),
        _ => return error_page((StatusCode::NOT_FOUND, "No such action".into())),
    };
    let outcome = Outcome::of(done, "domains");
    settings_page(&state, &headers, Some(team_id), outcome).await
}

#[derive(Deserialize)]
pub(super) struct DeleteTeamForm {
    #[serde(default)]
    confirm_name: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Deletes the team, its name typed to confirm; the console then shows the Personal Team.
pub(super) async fn delete_team(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(team_id): Path<String>,
    Form(form): Form<DeleteTeamForm>,
) -> Response {
    let (caller, _) = match member_of(&state, &headers, &team_id, form.csrf.as_deref()).await {
        Ok(member) => member,
        Err(problem) => return error_page(problem),
    };
    match state.teams.delete_team(&caller, &form.confirm_name, &meta).await {
        Ok(()) => {
            let mut response = Redirect::to("/console").into_response();
            // The deleted team is not remembered.
            response
                .headers_mut()
                .append(header::SET_COOKIE, set_cookie(&state, TEAM_COOKIE, "", 0, "Lax"));
            response
        }
        Err(error) => {
            let outcome = Outcome::of(Err::<String, _>(error), "delete");
            settings_page(&state, &headers, Some(team_id), outcome).await
        }
    }
}
