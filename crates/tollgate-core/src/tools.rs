//! Server-side tools (xAI's agentic web and X search): Tollgate runs the search loop itself.
//!
//! The client names `{"type": "web_search"}` or `{"type": "x_search"}` in `tools`; the gateway
//! takes them out and offers them to the model as functions taking a query
//! ([`tollgate_gateway::search::offer`]). Each call the model makes is searched on the
//! operator's backend, the cleaned results go back as tool messages, and the model is called
//! again, up to [`ToolSettings::max_rounds`] rounds and [`ToolSettings::deadline`]; then it is
//! called once more without the tools, to answer. Every model call's tokens and every search that
//! succeeded are charged on the one request ([`ToolRun::usage`]); the credit hold covered the
//! worst case ([`ServerTools::demand`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_domain::{ServerTool, TokenUsage};
use tollgate_gateway::pool::UpstreamEvent;
use tollgate_gateway::search::{self, RequestedTool, SearchBackend, SearchError, SearchHit, SearchLimits};
use tollgate_gateway::usage::{ToolDemand, parse_usage};
use tollgate_gateway::wire::{ChatCompletionRequest, ChatMessage};
use tollgate_gateway::{GatewayError, ModelRoute};

/// The longest query sent to a backend, in characters (a longer one is cut).
const MAX_QUERY_CHARS: usize = 500;

/// How the loop is bounded.
#[derive(Debug, Clone)]
pub struct ToolSettings {
    /// Model calls that may ask for searches; one more then answers without the tools.
    pub max_rounds: u32,
    /// Searches run per round at most (more are answered "not run", not charged).
    pub max_calls_per_round: u32,
    /// No search starts this long after the request began.
    pub deadline: Duration,
    /// Results and time per search.
    pub limits: SearchLimits,
}

/// The configured search backends and the loop's bounds.
#[derive(Clone)]
pub struct ServerTools {
    web: Option<Arc<dyn SearchBackend>>,
    x: Option<Arc<dyn SearchBackend>>,
    settings: Arc<ToolSettings>,
}

impl std::fmt::Debug for ServerTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTools")
            .field("web", &self.web.as_ref().map(|b| b.name()))
            .field("x", &self.x.as_ref().map(|b| b.name()))
            .field("settings", &self.settings)
            .finish()
    }
}

/// One search the model asked for.
#[derive(Debug, Clone)]
pub struct SearchCall {
    /// Which tool.
    pub tool: ServerTool,
    /// The model's id for the call.
    pub call_id: String,
    /// What was searched.
    pub query: String,
    /// The results shown to the model, or why the search failed (then it is not charged).
    pub outcome: Result<Vec<SearchHit>, String>,
}

/// What a tool loop did.
#[derive(Debug)]
pub struct ToolRun {
    /// The model's final answer (a chat completion, the server-side calls taken out of its
    /// message), or the upstream error that ended the loop.
    pub answer: Result<Value, GatewayError>,
    /// Every model call's tokens and every search charged.
    pub usage: TokenUsage,
    /// Whether any model call's tokens were counted by Tollgate (the upstream reported none).
    pub estimated: bool,
    /// The searches, in the order run.
    pub searches: Vec<SearchCall>,
}

impl ToolRun {
    /// The URLs of the results shown to the model, deduplicated, in the order shown: xAI's
    /// `citations`.
    #[must_use]
    pub fn citations(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for hit in self
            .searches
            .iter()
            .filter_map(|call| call.outcome.as_ref().ok())
            .flatten()
        {
            if !urls.contains(&hit.url) {
                urls.push(hit.url.clone());
            }
        }
        urls
    }

    /// Whether anything was used that must be charged, even if the loop then failed.
    #[must_use]
    pub fn used_anything(&self) -> bool {
        self.usage != TokenUsage::default()
    }
}

impl ServerTools {
    /// The tools with these backends (`None`: not offered) and bounds.
    #[must_use]
    pub fn new(web: Option<Arc<dyn SearchBackend>>, x: Option<Arc<dyn SearchBackend>>, settings: ToolSettings) -> Self {
        Self {
            web,
            x,
            settings: Arc::new(settings),
        }
    }

    /// No tools offered.
    #[must_use]
    pub fn none() -> Self {
        Self::new(
            None,
            None,
            ToolSettings {
                max_rounds: 1,
                max_calls_per_round: 1,
                deadline: Duration::from_secs(1),
                limits: SearchLimits {
                    max_results: 1,
                    max_snippet_chars: 100,
                    timeout: Duration::from_secs(1),
                },
            },
        )
    }

    /// Whether the operator configured a backend for `tool`.
    #[must_use]
    pub fn offers(&self, tool: ServerTool) -> bool {
        self.backend(tool).is_some()
    }

    fn backend(&self, tool: ServerTool) -> Option<&Arc<dyn SearchBackend>> {
        match tool {
            ServerTool::WebSearch => self.web.as_ref(),
            ServerTool::XSearch => self.x.as_ref(),
        }
    }

    /// What a loop with `requested` may use at most, for its credit hold: every round's calls
    /// all made, of each requested tool, each with its results at their cap.
    #[must_use]
    pub fn demand(&self, requested: &[RequestedTool]) -> ToolDemand {
        if requested.is_empty() {
            return ToolDemand::default();
        }
        let settings = &self.settings;
        let rounds = u64::from(settings.max_rounds);
        let calls = u64::from(settings.max_calls_per_round);
        let limits = &settings.limits;
        // Every byte a token at most: the preamble and query, then each result's title (200
        // characters), URL, date and snippet, in UTF-8's four bytes a character at most.
        let per_result = 4 * 201 + search::MAX_URL_BYTES as u64 + 64 + 4 * (limits.max_snippet_chars as u64 + 1);
        let per_call = 512 + 4 * MAX_QUERY_CHARS as u64 + per_result * limits.max_results as u64;
        let searches = |tool: ServerTool| {
            if requested.iter().any(|r| r.tool == tool) {
                rounds.saturating_mul(calls)
            } else {
                0
            }
        };
        ToolDemand {
            search_rounds: rounds,
            results_per_round: per_call.saturating_mul(calls),
            messages_per_round: calls.saturating_add(1),
            web_searches: searches(ServerTool::WebSearch),
            x_searches: searches(ServerTool::XSearch),
        }
    }

    /// Runs the loop for `request` (the tools already offered to the model as functions) on
    /// `route`, the model's calls cut off at `deadline`. `progress` hears of each search as it
    /// finishes (a stream shows them).
    pub async fn run(
        &self,
        route: &ModelRoute,
        mut request: ChatCompletionRequest,
        requested: &[RequestedTool],
        deadline: Instant,
        observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
        progress: &(dyn Fn(&SearchCall) + Send + Sync),
    ) -> ToolRun {
        let settings = &self.settings;
        // Every model call of the loop is whole: a stream shows the searches, then the answer.
        request.stream = None;
        request.stream_options = None;
        let searching_until = (Instant::now() + settings.deadline).min(deadline);
        let mut run = ToolRun {
            answer: Err(GatewayError::Timeout),
            usage: TokenUsage::default(),
            estimated: false,
            searches: Vec::new(),
        };
        let mut round = 0;
        loop {
            let last = round >= settings.max_rounds || Instant::now() >= searching_until;
            if last {
                withdraw_tools(&mut request);
            }
            let answer = tokio::time::timeout_at(deadline.into(), route.chat(&request, observe))
                .await
                .unwrap_or(Err(GatewayError::Timeout));
            let mut answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    run.answer = Err(error);
                    return run;
                }
            };
            match parse_usage(&answer["usage"]) {
                Some(usage) => run.usage = run.usage.plus(&usage),
                None => {
                    run.estimated = true;
                    run.usage = run.usage.plus(&TokenUsage {
                        prompt_tokens: route.estimate_prompt(&request),
                        completion_tokens: route.estimate_completion(&answer),
                        ..TokenUsage::default()
                    });
                }
            }
            let message = answer["choices"][0]["message"].clone();
            let calls = message["tool_calls"].as_array().cloned().unwrap_or_default();
            let ours: Vec<(ServerTool, &Value)> = calls
                .iter()
                .filter_map(|call| {
                    let name = call["function"]["name"].as_str()?;
                    let tool = ServerTool::from_name(name)?;
                    requested.iter().any(|r| r.tool == tool).then_some((tool, call))
                })
                .collect();
            // The answer: no searches asked for, or the client's own functions too (the client
            // runs those; the searches of that turn are dropped, neither run nor charged), or
            // the last round.
            if last || ours.is_empty() || ours.len() < calls.len() {
                strip_server_calls(&mut answer);
                run.answer = Ok(answer);
                return run;
            }
            round += 1;
            request.messages.push(assistant_turn(&message, &calls));
            let limit = settings.max_calls_per_round as usize;
            let searches = ours.iter().take(limit).map(|(tool, call)| async move {
                let call_id = call["id"].as_str().unwrap_or("").to_owned();
                let options = requested
                    .iter()
                    .find(|r| r.tool == *tool)
                    .map(|r| r.options.clone())
                    .unwrap_or_default();
                let query = query_of(call);
                let outcome = match &query {
                    None => Err("the call needs a query: {\"query\": \"...\"}".to_owned()),
                    Some(query) => self.search(*tool, query, &options).await,
                };
                SearchCall {
                    tool: *tool,
                    call_id,
                    query: query.unwrap_or_default(),
                    outcome,
                }
            });
            let done = futures_util::future::join_all(searches).await;
            for call in done {
                progress(&call);
                let content = match &call.outcome {
                    Ok(hits) => {
                        match call.tool {
                            ServerTool::WebSearch => run.usage.web_search_calls += 1,
                            ServerTool::XSearch => run.usage.x_search_calls += 1,
                        }
                        search::results_text(call.tool, &call.query, hits)
                    }
                    Err(reason) => format!("The search failed ({reason}); it was not charged. Answer without it."),
                };
                request.messages.push(tool_message(&call.call_id, content));
                run.searches.push(call);
            }
            for (_, call) in ours.iter().skip(limit) {
                let content = format!("Not run: at most {limit} searches per turn.");
                request
                    .messages
                    .push(tool_message(call["id"].as_str().unwrap_or(""), content));
            }
        }
    }

    /// One search, cleaned; a failure said without detail the model need not see.
    async fn search(
        &self,
        tool: ServerTool,
        query: &str,
        options: &search::SearchOptions,
    ) -> Result<Vec<SearchHit>, String> {
        let Some(backend) = self.backend(tool) else {
            return Err("the tool is not offered".into());
        };
        let limits = &self.settings.limits;
        let max_results = options
            .max_results
            .unwrap_or(limits.max_results)
            .min(limits.max_results);
        let hits = tokio::time::timeout(limits.timeout, backend.search(query, options, max_results))
            .await
            .unwrap_or(Err(SearchError::Timeout));
        match hits {
            Ok(hits) => Ok(search::clean(hits, options, limits, max_results)),
            Err(error) => {
                tracing::warn!(backend = backend.name(), error = %error, "a server-side search failed");
                Err(match error {
                    SearchError::Timeout => "the search timed out".into(),
                    SearchError::Failed(_) => "the search backend failed".into(),
                })
            }
        }
    }
}

/// The query of a model's call (`{"query": "..."}`), cut to [`MAX_QUERY_CHARS`].
fn query_of(call: &Value) -> Option<String> {
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str()?).ok()?;
    let query = arguments.get("query").or_else(|| arguments.get("q"))?.as_str()?.trim();
    if query.is_empty() {
        return None;
    }
    Some(query.chars().take(MAX_QUERY_CHARS).collect())
}

/// The model's turn, as the next call's history: its text and its calls.
fn assistant_turn(message: &Value, calls: &[Value]) -> ChatMessage {
    let turn = json!({"role": "assistant", "content": message.get("content").cloned().unwrap_or(Value::Null),
        "tool_calls": calls});
    serde_json::from_value(turn).unwrap_or_else(|_| ChatMessage {
        role: tollgate_gateway::wire::ChatRole::Assistant,
        content: None,
        extra: serde_json::Map::from_iter([("tool_calls".to_owned(), Value::Array(calls.to_vec()))]),
    })
}

fn tool_message(call_id: &str, content: String) -> ChatMessage {
    ChatMessage {
        role: tollgate_gateway::wire::ChatRole::Tool,
        content: Some(tollgate_gateway::wire::MessageContent::Text(content)),
        extra: serde_json::Map::from_iter([("tool_call_id".to_owned(), Value::String(call_id.to_owned()))]),
    }
}

/// Takes the server-side functions out of the request, so the model answers: the client's own
/// functions stay.
fn withdraw_tools(request: &mut ChatCompletionRequest) {
    let server = |tool: &Value| {
        tool["function"]["name"]
            .as_str()
            .is_some_and(|name| ServerTool::from_name(name).is_some())
    };
    if let Some(Value::Array(tools)) = request.extra.get_mut("tools") {
        tools.retain(|tool| !server(tool));
        if tools.is_empty() {
            request.extra.remove("tools");
            request.extra.remove("tool_choice");
            request.extra.remove("parallel_tool_calls");
        }
    }
    if request.extra.get("tool_choice").is_some_and(server) {
        request.extra.remove("tool_choice");
    }
}

/// Takes any server-side call out of an answer's messages (the client cannot run them), and a
/// `tool_calls` finish with none left becomes `stop`.
fn strip_server_calls(answer: &mut Value) {
    let Some(choices) = answer["choices"].as_array_mut() else {
        return;
    };
    for choice in choices {
        let message = &mut choice["message"];
        let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        calls.retain(|call| {
            call["function"]["name"]
                .as_str()
                .is_none_or(|name| ServerTool::from_name(name).is_none())
        });
        if calls.is_empty() {
            if let Some(message) = message.as_object_mut() {
                message.remove("tool_calls");
            }
            if choice["finish_reason"] == "tool_calls" {
                choice["finish_reason"] = json!("stop");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_and_cut() {
        let call = |arguments: &str| json!({"function": {"name": "web_search", "arguments": arguments}});
        assert_eq!(query_of(&call(r#"{"query": " rust "}"#)).as_deref(), Some("rust"));
        assert_eq!(query_of(&call(r#"{"q": "x"}"#)).as_deref(), Some("x"));
        assert_eq!(query_of(&call(r#"{"query": ""}"#)), None);
        assert_eq!(query_of(&call("not json")), None);
        let long = format!(r#"{{"query": "{}"}}"#, "a".repeat(900));
        assert_eq!(query_of(&call(&long)).unwrap().len(), MAX_QUERY_CHARS);
    }

    #[test]
    fn server_calls_are_stripped_from_answers_and_withdrawn_from_requests() {
        let mut answer = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "tool_calls": [{"id": "1", "function": {"name": "web_search", "arguments": "{}"}}]}}]});
        strip_server_calls(&mut answer);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
        assert!(answer["choices"][0]["message"].get("tool_calls").is_none());

        let mut request: ChatCompletionRequest = serde_json::from_value(json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "web_search"}},
                {"type": "function", "function": {"name": "lookup"}}],
            "tool_choice": {"type": "function", "function": {"name": "web_search"}}}))
        .unwrap();
        withdraw_tools(&mut request);
        assert_eq!(request.extra["tools"].as_array().unwrap().len(), 1);
        assert!(request.extra.get("tool_choice").is_none());
    }

    #[test]
    fn the_demand_covers_every_round() {
        let tools = ServerTools::new(
            None,
            None,
            ToolSettings {
                max_rounds: 3,
                max_calls_per_round: 2,
                deadline: Duration::from_secs(60),
                limits: SearchLimits {
                    max_results: 5,
                    max_snippet_chars: 1000,
                    timeout: Duration::from_secs(10),
                },
            },
        );
        assert_eq!(tools.demand(&[]), ToolDemand::default());
        let web = RequestedTool {
            tool: ServerTool::WebSearch,
            options: search::SearchOptions::default(),
        };
        let demand = tools.demand(&[web]);
        assert_eq!(
            (demand.search_rounds, demand.web_searches, demand.x_searches),
            (3, 6, 0)
        );
        assert_eq!(demand.messages_per_round, 3);
        assert!(demand.results_per_round > 2 * 5 * 4000);
    }
}
