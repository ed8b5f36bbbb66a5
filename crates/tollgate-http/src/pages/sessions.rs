//! The Sessions page (`/sessions`, where sign-in alerts send people): where and when the account
//! is signed in, with what; end one, or every other. Plain forms, enhanced by htmx.

use super::*;

/// A session as the table shows it.
struct SessionRow {
    id: String,
    device: String,
    user_agent: String,
    place: String,
    signed_in: String,
    last_seen: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "sessions_fragment.html")]
struct SessionsFragment {
    csrf: String,
    sessions: Vec<SessionRow>,
    others: usize,
    error: Option<String>,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    frame: Frame,
    sessions: String,
}

impl std::ops::Deref for SessionsPage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// A browser and system a person recognises, from a user agent ("Firefox on Linux"); the
/// agent itself when neither is known.
fn device(user_agent: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .into_iter()
    .find(|(marker, _)| user_agent.contains(marker))
    .map(|(_, name)| name);
    let system = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .into_iter()
    .find(|(marker, _)| user_agent.contains(marker))
    .map(|(_, name)| name);
    match (browser, system) {
        (Some(browser), Some(system)) => format!("{browser} on {system}"),
        (Some(name), None) | (None, Some(name)) => name.to_owned(),
        (None, None) if user_agent.is_empty() => "Unknown device".to_owned(),
        (None, None) => user_agent.chars().take(60).collect(),
    }
}

fn when(at: tollgate_domain::Timestamp) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The signed-in person's sessions, this one first.
async fn sessions_fragment(
    state: &AppState,
    visitor: &Visitor,
    error: Option<String>,
    notice: Option<String>,
) -> Result<SessionsFragment, AccountError> {
    let mut sessions = state.accounts.sessions(&visitor.user).await?;
    sessions.sort_by_key(|session| session.id != visitor.session.id);
    let others = sessions.len().saturating_sub(1);
    Ok(SessionsFragment {
        csrf: visitor.csrf.clone(),
        sessions: sessions
            .iter()
            .map(|session| {
                let user_agent = session.user_agent.clone().unwrap_or_default();
                SessionRow {
                    id: session.id.to_string(),
                    device: device(&user_agent),
                    user_agent,
                    place: match (&session.location, &session.ip) {
                        (Some(location), Some(ip)) => format!("{location} ({ip})"),
                        (Some(location), None) => location.clone(),
                        (None, Some(ip)) => ip.clone(),
                        (None, None) => "Unknown".to_owned(),
                    },
                    signed_in: when(session.created_at),
                    last_seen: when(session.last_seen_at),
                    current: session.id == visitor.session.id,
                }
            })
            .collect(),
        others,
        error,
        notice,
    })
}

/// `/sessions`.
pub(super) async fn sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<ConsoleQuery>,
) -> Response {
    sessions_page(&state, &headers, query.team, StatusCode::OK, None, None).await
}

async fn sessions_page(
    state: &AppState,
    headers: &HeaderMap,
    team: Option<String>,
    status: StatusCode,
    error: Option<String>,
    notice: Option<String>,
) -> Response {
    let context = match context(state, headers, team).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let fragment = match sessions_fragment(state, &context.visitor, error, notice).await {
        Ok(fragment) => fragment,
        Err(error) => return error_page(failure(error)),
    };
    let Some(sessions) = rendered(&fragment) else {
        return unrendered();
    };
    let page = SessionsPage {
        frame: context.frame(state, "/sessions"),
        sessions,
    };
    let mut response = console_page(state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

/// The answer to a change: the fragment for htmx, the whole page for a plain form.
async fn changed(state: &AppState, headers: &HeaderMap, done: Result<(Visitor, String), AccountError>) -> Response {
    let htmx = from_htmx(headers);
    let (status, error, notice, acted) = match done {
        Ok((visitor, notice)) => (StatusCode::OK, None, Some(notice), Some(visitor)),
        Err(error) => {
            let (status, message) = failure(error);
            (status, Some(message), None, None)
        }
    };
    if !htmx {
        return sessions_page(state, headers, None, status, error, notice).await;
    }
    let visitor = match acted {
        Some(acted) => acted,
        None => match visitor(state, headers).await {
            Some(visitor) => visitor,
            None => return fragment_error("sessions", (status, error.unwrap_or_default())),
        },
    };
    match sessions_fragment(state, &visitor, error, notice).await {
        Ok(fragment) => html(status, &fragment),
        Err(error) => fragment_error("sessions", failure(error)),
    }
}

/// End one session of the signed-in person (the page offers it for the others: signing out
/// ends this one).
pub(super) async fn end_session(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    Form(form): Form<ActionForm>,
) -> Response {
    let done = async {
        let visitor = acting(&state, &headers, form.csrf.as_deref()).await?;
        let id: tollgate_domain::SessionId = session_id.parse().map_err(|_| AccountError::SessionNotFound)?;
        state.accounts.end_session(&visitor.user, id, &meta).await?;
        Ok((visitor, "The session was ended: that browser is signed out.".to_owned()))
    }
    .await;
    changed(&state, &headers, done).await
}

/// End every session of the signed-in person but this one.
pub(super) async fn end_other_sessions(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let done = async {
        let visitor = acting(&state, &headers, form.csrf.as_deref()).await?;
        let ended = state
            .accounts
            .end_other_sessions(&visitor.user, visitor.session.id, &meta)
            .await?;
        let notice = match ended {
            0 => "No other session was signed in.".to_owned(),
            1 => "1 other session was ended.".to_owned(),
            n => format!("{n} other sessions were ended."),
        };
        Ok((visitor, notice))
    }
    .await;
    changed(&state, &headers, done).await
}

#[cfg(test)]
mod tests {
    use super::device;

    #[test]
    fn devices_are_named_as_people_know_them() {
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(device(firefox), "Firefox on Linux");
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36";
        assert_eq!(device(chrome), "Chrome on Windows");
        let safari = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Version/17.0 Mobile/15E148 Safari/604.1";
        assert_eq!(device(safari), "Safari on iOS");
        assert_eq!(device("curl/8.5.0"), "curl");
        assert_eq!(device(""), "Unknown device");
    }
}
