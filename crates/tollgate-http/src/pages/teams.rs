//! "+ Create Team" from the top bar's switcher: a name and an optional description; the new
//! team (its creator its Admin) becomes the one the console shows.

use super::*;

#[derive(Template)]
#[template(path = "new_team.html")]
struct NewTeamPage {
    frame: Frame,
    name: String,
    description: String,
    /// What is wrong with the name or the description, shown next to it.
    name_error: Option<String>,
    description_error: Option<String>,
}

impl std::ops::Deref for NewTeamPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// `/console/teams/new`.
pub(super) async fn new_team_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    let context = match context(&state, &headers, query.team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let page = NewTeamPage {
        frame: context.frame(&state, "/console/teams/new"),
        name: String::new(),
        description: String::new(),
        name_error: None,
        description_error: None,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub(super) struct NewTeamForm {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    csrf: Option<String>,
}

/// Creates the team and shows it; a bad name or description is shown next to its field.
pub(super) async fn create_team(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<NewTeamForm>,
) -> Response {
    let visitor = match acting(&state, &headers, form.csrf.as_deref()).await {
        Ok(visitor) => visitor,
        Err(error) => return error_page(failure(error)),
    };
    let description = Some(form.description.trim()).filter(|d| !d.is_empty());
    let (name_error, description_error) = match state
        .teams
        .create_team(&visitor.user, form.name.trim(), description, &meta)
        .await
    {
        Ok(team) => {
            let mut response = Redirect::to(&format!("/console?team={}", team.id)).into_response();
            response.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&state, TEAM_COOKIE, &team.id.to_string(), 365 * 86_400, "Lax"),
            );
            return response;
        }
        Err(error @ tollgate_core::TeamError::InvalidDescription(_)) => (None, Some(failure(error).1)),
        Err(error @ tollgate_core::TeamError::InvalidName(_)) => (Some(failure(error).1), None),
        Err(error) => return error_page(failure(error)),
    };
    let context = match context(&state, &headers, None).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let page = NewTeamPage {
        frame: context.frame(&state, "/console/teams/new"),
        name: form.name,
        description: form.description,
        name_error,
        description_error,
    };
    html(StatusCode::BAD_REQUEST, &page)
}
