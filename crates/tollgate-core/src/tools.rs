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
use tollgate_gateway::raw::{MemberSpans, RawObject};
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
    pub answer: Result<ChatAnswer, GatewayError>,
    /// Every model call's tokens and every search charged.
    pub usage: TokenUsage,
    /// Whether any model call's tokens were counted by Tollgate (the upstream reported none).
    pub estimated: bool,
    /// The searches, in the order run.
    pub searches: Vec<SearchCall>,
}

/// A whole chat answer: its bytes as the upstream sent them, when nothing was taken out of them
/// (so they may be passed on with only `model`, `usage` and `citations` set), and the answer read
/// — for a plain answer ([`tollgate_gateway::upstream::WholeChat`]) only if a surface asks.
#[derive(Debug)]
pub struct ChatAnswer {
    raw: Option<bytes::Bytes>,
    /// Where a plain answer's members lie in `raw`, as its first reading found them.
    spans: Option<MemberSpans>,
    /// `None` only for a plain answer, whose bytes are known to read.
    value: Option<Value>,
}

impl ChatAnswer {
    /// An answer read (`raw`: its bytes, when it is unchanged).
    #[must_use]
    pub fn read(value: Value, raw: Option<bytes::Bytes>) -> Self {
        Self {
            raw,
            spans: None,
            value: Some(value),
        }
    }

    /// The bytes as the upstream sent them, when nothing was taken out.
    #[must_use]
    pub fn raw(&self) -> Option<&bytes::Bytes> {
        self.raw.as_ref()
    }

    /// The bytes as the upstream sent them, as an object's members, when nothing was taken out
    /// and they are an object [`RawObject`] reads (a plain answer's without a second scan).
    #[must_use]
    pub fn raw_object(&self) -> Option<RawObject<'_>> {
        let text = std::str::from_utf8(self.raw.as_deref()?).ok()?;
        match &self.spans {
            Some(spans) => RawObject::at_spans(text, spans),
            None => RawObject::parse(text),
        }
    }

    /// The answer read.
    #[must_use]
    pub fn value(&self) -> std::borrow::Cow<'_, Value> {
        match &self.value {
            Some(value) => std::borrow::Cow::Borrowed(value),
            None => std::borrow::Cow::Owned(self.read_raw()),
        }
    }

    /// The answer read, owned.
    #[must_use]
    pub fn into_value(self) -> Value {
        match self.value {
            Some(value) => value,
            None => self.read_raw(),
        }
    }

    fn read_raw(&self) -> Value {
        // A plain answer was checked to be an object a tree reader takes.
        serde_json::from_slice(self.raw.as_deref().unwrap_or_default()).unwrap_or_else(|error| {
            tracing::error!(%error, "a plain chat answer did not read");
            Value::Null
        })
    }
}

impl ToolRun {
    fn new() -> Self {
        Self {
            answer: Err(GatewayError::Timeout),
            usage: TokenUsage::default(),
            estimated: false,
            searches: Vec::new(),
        }
    }
}

/// The URLs of the results shown to the model, deduplicated, in the order shown: xAI's
/// `citations`.
#[must_use]
pub fn citations(searches: &[SearchCall]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for hit in searches.iter().filter_map(|call| call.outcome.as_ref().ok()).flatten() {
        if !urls.contains(&hit.url) {
            urls.push(hit.url.clone());
        }
    }
    urls
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
    /// `route`, each model call whole, the calls cut off at `deadline`. `progress` hears of each
    /// search as it finishes.
    pub async fn run(
        &self,
        route: &ModelRoute,
        mut request: ChatCompletionRequest,
        requested: &[RequestedTool],
        deadline: Instant,
        observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
        progress: &(dyn Fn(&SearchCall) + Send + Sync),
    ) -> ToolRun {
        request.stream = None;
        request.stream_options = None;
        let searching_until = (Instant::now() + self.settings.deadline).min(deadline);
        let mut run = ToolRun::new();
        let mut round = 0;
        loop {
            let last = round >= self.settings.max_rounds || Instant::now() >= searching_until;
            if last {
                withdraw_tools(&mut request);
            }
            let answer = tokio::time::timeout_at(deadline.into(), route.chat(&request, observe))
                .await
                .unwrap_or(Err(GatewayError::Timeout));
            let whole = match answer {
                Ok(whole) => whole,
                Err(error) => {
                    run.answer = Err(error);
                    return run;
                }
            };
            // A plain answer calls no tool: the loop ends, and nothing is taken out of it.
            let whole = match whole.into_plain() {
                Ok((raw, usage, spans)) => {
                    run.usage = run.usage.plus(&usage);
                    run.answer = Ok(ChatAnswer {
                        raw: Some(raw),
                        spans: Some(spans),
                        value: None,
                    });
                    return run;
                }
                Err(whole) => whole,
            };
            let raw = whole.raw.clone();
            let mut answer = match whole.into_value() {
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
            if last || !searches_only(&calls, requested) {
                let unchanged = !strip_server_calls(&mut answer);
                run.answer = Ok(ChatAnswer::read(answer, unchanged.then_some(raw)));
                return run;
            }
            round += 1;
            let content = message.get("content").cloned().unwrap_or(Value::Null);
            for call in self
                .search_round(&mut request, content, &calls, requested, &mut run)
                .await
            {
                progress(&call);
                run.searches.push(call);
            }
        }
    }

    /// Runs the loop as [`Self::run`] does, each model call streamed: what the model writes is
    /// passed to `sink` as it comes (its upstream chunks, without tool calls or usage), each
    /// search as it finishes, and the final round's last chunk (its finish reason, and the
    /// client's own tool calls, whole). The run's `answer` is then `Ok(Value::Null)`.
    pub async fn run_streamed(
        &self,
        route: &ModelRoute,
        mut request: ChatCompletionRequest,
        requested: &[RequestedTool],
        deadline: Instant,
        observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
        sink: &mut impl ToolSink,
    ) -> ToolRun {
        request.stream = Some(true);
        request
            .stream_options
            .get_or_insert_with(tollgate_gateway::wire::StreamOptions::default)
            .include_usage = Some(true);
        let searching_until = (Instant::now() + self.settings.deadline).min(deadline);
        let mut run = ToolRun::new();
        let mut round = 0;
        loop {
            let last = round >= self.settings.max_rounds || Instant::now() >= searching_until;
            if last {
                withdraw_tools(&mut request);
            }
            let turn = stream_turn(route, &request, deadline, observe, sink).await;
            let usage = match turn.usage {
                Some(usage) => usage,
                None => {
                    run.estimated = true;
                    TokenUsage {
                        prompt_tokens: if turn.started {
                            route.estimate_prompt(&request)
                        } else {
                            0
                        },
                        completion_tokens: turn.written_chars.div_ceil(4),
                        ..TokenUsage::default()
                    }
                }
            };
            run.usage = run.usage.plus(&usage);
            if let Some(error) = turn.error {
                run.answer = Err(error);
                return run;
            }
            if last || !searches_only(&turn.calls, requested) {
                let theirs: Vec<Value> = turn
                    .calls
                    .into_iter()
                    .filter(|call| server_tool_of(call).is_none())
                    .enumerate()
                    .map(|(index, mut call)| {
                        call["index"] = json!(index);
                        call
                    })
                    .collect();
                let finish = match turn.finish_reason.as_deref() {
                    Some("tool_calls") if theirs.is_empty() => "stop".to_owned(),
                    Some(reason) => reason.to_owned(),
                    None => "stop".to_owned(),
                };
                let delta = if theirs.is_empty() {
                    json!({})
                } else {
                    json!({"tool_calls": theirs})
                };
                sink.chunk(
                    json!({"id": turn.id, "object": "chat.completion.chunk", "created": turn.created,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
                )
                .await;
                run.answer = Ok(ChatAnswer::read(Value::Null, None));
                return run;
            }
            round += 1;
            let content = if turn.content.is_empty() {
                Value::Null
            } else {
                Value::String(turn.content)
            };
            for call in self
                .search_round(&mut request, content, &turn.calls, requested, &mut run)
                .await
            {
                sink.search(&call).await;
                run.searches.push(call);
            }
        }
    }

    /// Runs the searches the model asked for (at most [`ToolSettings::max_calls_per_round`]),
    /// adds its turn and a result for each call to `request`, and counts the fees of those that
    /// succeeded: the searches run, in order.
    async fn search_round(
        &self,
        request: &mut ChatCompletionRequest,
        content: Value,
        calls: &[Value],
        requested: &[RequestedTool],
        run: &mut ToolRun,
    ) -> Vec<SearchCall> {
        request.messages.push(assistant_turn(content, calls));
        let limit = self.settings.max_calls_per_round as usize;
        let searches = calls.iter().take(limit).map(|call| async move {
            let tool = server_tool_of(call).unwrap_or(ServerTool::WebSearch);
            let options = requested
                .iter()
                .find(|r| r.tool == tool)
                .map(|r| r.options.clone())
                .unwrap_or_default();
            let query = query_of(call);
            let outcome = match &query {
                None => Err("the call needs a query: {\"query\": \"...\"}".to_owned()),
                Some(query) => self.search(tool, query, &options).await,
            };
            SearchCall {
                tool,
                call_id: call["id"].as_str().unwrap_or("").to_owned(),
                query: query.unwrap_or_default(),
                outcome,
            }
        });
        let done = futures_util::future::join_all(searches).await;
        for call in &done {
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
        }
        for call in calls.iter().skip(limit) {
            let content = format!("Not run: at most {limit} searches per turn.");
            request
                .messages
                .push(tool_message(call["id"].as_str().unwrap_or(""), content));
        }
        done
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
fn assistant_turn(content: Value, calls: &[Value]) -> ChatMessage {
    let content = match content {
        Value::String(text) => Some(tollgate_gateway::wire::MessageContent::Text(text)),
        _ => None,
    };
    ChatMessage {
        role: tollgate_gateway::wire::ChatRole::Assistant,
        content,
        extra: serde_json::Map::from_iter([("tool_calls".to_owned(), Value::Array(calls.to_vec()))]),
    }
}

/// The server-side tool a model's call is for, if it is one.
fn server_tool_of(call: &Value) -> Option<ServerTool> {
    ServerTool::from_name(call["function"]["name"].as_str()?)
}

/// Whether the model's calls are all searches the request offered (and there is one at least):
/// a turn calling the client's own functions too ends the loop (the client runs those; the
/// searches of that turn are dropped, neither run nor charged).
fn searches_only(calls: &[Value], requested: &[RequestedTool]) -> bool {
    !calls.is_empty()
        && calls
            .iter()
            .all(|call| server_tool_of(call).is_some_and(|tool| requested.iter().any(|r| r.tool == tool)))
}

/// Where a streamed loop shows what happens.
pub trait ToolSink: Send {
    /// An upstream chunk to pass on (what the model writes, or the final round's last chunk).
    fn chunk(&mut self, chunk: Value) -> impl std::future::Future<Output = ()> + Send;
    /// A search that finished.
    fn search(&mut self, call: &SearchCall) -> impl std::future::Future<Output = ()> + Send;
}

/// One streamed model call, as it ended.
#[derive(Default)]
struct StreamedTurn {
    /// Whether the upstream answered at all.
    started: bool,
    id: Value,
    created: Value,
    /// Its text (passed on as it came).
    content: String,
    /// Characters it wrote, for an estimate without a usage report.
    written_chars: u64,
    /// Its tool calls, assembled from their parts.
    calls: Vec<Value>,
    finish_reason: Option<String>,
    usage: Option<TokenUsage>,
    error: Option<GatewayError>,
}

/// Streams one model call: text passed to `sink` as it comes; tool calls, the finish reason and
/// the usage kept.
async fn stream_turn(
    route: &ModelRoute,
    request: &ChatCompletionRequest,
    deadline: Instant,
    observe: &(dyn Fn(UpstreamEvent<'_>) + Sync),
    sink: &mut impl ToolSink,
) -> StreamedTurn {
    use futures_util::StreamExt as _;
    use tollgate_gateway::sse::{SseDecoder, SseEvent};

    let mut turn = StreamedTurn::default();
    let opened = tokio::time::timeout_at(deadline.into(), route.chat_stream(request, observe))
        .await
        .unwrap_or(Err(GatewayError::Timeout));
    let mut upstream = match opened {
        Ok((stream, _)) => Box::pin(stream),
        Err(error) => {
            turn.error = Some(error);
            return turn;
        }
    };
    turn.started = true;
    let mut decoder = SseDecoder::default();
    // Tool calls by their stream index: (id, name, arguments).
    let mut parts: Vec<(u64, String, String, String)> = Vec::new();
    let mut done = false;
    'stream: while !done {
        let next = match tokio::time::timeout_at(deadline.into(), upstream.next()).await {
            Ok(Some(Ok(bytes))) => bytes,
            Ok(Some(Err(error))) => {
                turn.error = Some(error);
                break;
            }
            Ok(None) => break,
            Err(_) => {
                turn.error = Some(GatewayError::Timeout);
                break;
            }
        };
        for event in decoder.push(&next) {
            let payload = match event {
                Ok(SseEvent::Data(payload)) => payload,
                Ok(SseEvent::Done) => {
                    done = true;
                    continue 'stream;
                }
                Err(error) => {
                    turn.error = Some(GatewayError::InvalidResponse(error.to_string()));
                    break 'stream;
                }
            };
            let Ok(mut chunk) = serde_json::from_str::<Value>(&payload) else {
                continue;
            };
            if let Some(usage) = parse_usage(&chunk["usage"]) {
                turn.usage = Some(usage);
            }
            if turn.id.is_null() {
                turn.id = chunk["id"].clone();
                turn.created = chunk["created"].clone();
            }
            let Some(choice) = chunk["choices"].get_mut(0) else {
                continue;
            };
            if let Some(reason) = choice["finish_reason"].as_str() {
                turn.finish_reason = Some(reason.to_owned());
            }
            let delta = &mut choice["delta"];
            if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
                for (position, call) in calls.iter().enumerate() {
                    let index = call["index"].as_u64().unwrap_or(position as u64);
                    let known = parts.iter().position(|part| part.0 == index);
                    let part = match known {
                        Some(at) => &mut parts[at],
                        None => {
                            parts.push((index, String::new(), String::new(), String::new()));
                            let last = parts.len() - 1;
                            &mut parts[last]
                        }
                    };
                    if let Some(id) = call["id"].as_str() {
                        id.clone_into(&mut part.1);
                    }
                    if let Some(name) = call["function"]["name"].as_str() {
                        part.2.push_str(name);
                    }
                    if let Some(arguments) = call["function"]["arguments"].as_str() {
                        part.3.push_str(arguments);
                    }
                }
            }
            let written = tollgate_gateway::usage::generated_chars(delta);
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                turn.content.push_str(text);
            }
            if let Some(delta) = delta.as_object_mut() {
                delta.remove("tool_calls");
            }
            if written > 0 || choice.get("delta").and_then(|d| d.get("role")).is_some() {
                turn.written_chars += written;
                // Passed on without its finish reason: the loop decides how the answer ends.
                choice["finish_reason"] = Value::Null;
                if let Some(chunk) = chunk.as_object_mut() {
                    chunk.remove("usage");
                }
                sink.chunk(chunk).await;
            }
        }
    }
    if !done && turn.error.is_none() && decoder.finish() != Some(SseEvent::Done) {
        turn.error = Some(GatewayError::InvalidResponse("the stream ended without [DONE]".into()));
    }
    turn.calls = parts
        .into_iter()
        .map(|(_, id, name, arguments)| json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
        .collect();
    turn
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
fn strip_server_calls(answer: &mut Value) -> bool {
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else {
        return false;
    };
    let mut changed = false;
    for choice in choices {
        let Some(message) = choice.get_mut("message") else {
            continue;
        };
        let Some(calls) = message.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        let before = calls.len();
        calls.retain(|call| {
            call["function"]["name"]
                .as_str()
                .is_none_or(|name| ServerTool::from_name(name).is_none())
        });
        changed |= calls.len() != before;
        if calls.is_empty() {
            if let Some(message) = message.as_object_mut() {
                message.remove("tool_calls");
            }
            changed = true;
            if choice["finish_reason"] == "tool_calls" {
                choice["finish_reason"] = json!("stop");
            }
        }
    }
    changed
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
    fn an_answer_without_server_calls_is_left_as_it_came() {
        let plain = json!({"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}]});
        let theirs = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "tool_calls": [{"id": "1", "function": {"name": "get_weather", "arguments": "{}"}}]}}]});
        for answer in [plain, theirs, json!({"id": "x"})] {
            let mut stripped = answer.clone();
            assert!(!strip_server_calls(&mut stripped));
            assert_eq!(stripped, answer);
        }
        let mut empty = json!({"choices": [{"finish_reason": "stop", "message": {"tool_calls": []}}]});
        assert!(strip_server_calls(&mut empty), "an empty list is taken out");
    }

    #[test]
    fn server_calls_are_stripped_from_answers_and_withdrawn_from_requests() {
        let mut answer = json!({"choices": [{"finish_reason": "tool_calls", "message": {"role": "assistant",
            "tool_calls": [{"id": "1", "function": {"name": "web_search", "arguments": "{}"}}]}}]});
        assert!(strip_server_calls(&mut answer));
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
