//! The Responses API (`POST /v1/responses`, xAI's recommended API) on top of an upstream's chat
//! completions: a request becomes a chat request (the stored conversation, the instructions and
//! the new input as messages; tools, formats and limits as chat parameters), and the chat
//! answer — whole or streamed — becomes a response object and, when streaming, the typed events
//! (`response.created` … `response.completed`) the `openai` SDK reads.
//!
//! Pure translation: no IO. Storing responses and billing them are the caller's.
//!
//! A stored conversation is kept as chat messages (what the upstream is sent again on the next
//! turn): the previous turns, this turn's input, and the assistant's answer. Instructions are
//! not part of it: like OpenAI's, they apply to the turn that names them only.

use serde::Deserialize;
use serde_json::{Map, Number, Value, json};
use tollgate_domain::{Ticks, TokenUsage};

use crate::wire::ChatCompletionRequest;

/// `POST /v1/responses` body. Known fields are typed; any other field is refused by name, so a
/// client never gets an answer that silently ignored what it asked for.
#[derive(Debug, Clone, Deserialize)]
pub struct ResponsesRequest {
    /// Model name or alias.
    pub model: String,
    /// A text (one user message) or a list of input items.
    pub input: ResponseInput,
    /// A system prompt for this turn only.
    #[serde(default)]
    pub instructions: Option<String>,
    /// The stored response this one continues.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Whether to store the response (default true), so it can be fetched and continued.
    #[serde(default)]
    pub store: Option<bool>,
    /// Stream typed events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// The output token budget (reasoning included).
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<Number>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<Number>,
    /// Function tools (`{"type":"function","name",...}`).
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type":"function","name"}`.
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools at once.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[serde(default)]
    pub text: Option<Value>,
    /// `{"effort": "low" | "medium" | "high"}`.
    #[serde(default)]
    pub reasoning: Option<Value>,
    /// Up to 16 string pairs kept with the response.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// An end-user id.
    #[serde(default)]
    pub user: Option<String>,
    /// Extra output to include (accepted; nothing extra is produced here).
    #[serde(default)]
    pub include: Option<Vec<String>>,
    /// Most likely tokens to report per position.
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Accepted and not used (caching is the upstream's).
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    /// Accepted and not used.
    #[serde(default)]
    pub service_tier: Option<String>,
    /// `auto` or `disabled`: the conversation is never truncated here.
    #[serde(default)]
    pub truncation: Option<String>,
    /// Streaming options (accepted; usage always ends a stream).
    #[serde(default)]
    pub stream_options: Option<Value>,
    /// Background responses are not offered (`false` only).
    #[serde(default)]
    pub background: Option<bool>,
    /// Anything else: refused by name.
    #[serde(flatten)]
    pub unknown: Map<String, Value>,
}

/// `input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Messages and items (function calls and their outputs).
    Items(Vec<Value>),
}

/// Most metadata pairs, and their sizes (OpenAI's limits).
const MAX_METADATA_PAIRS: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

impl ResponsesRequest {
    /// Whether the client asked for a stream.
    #[must_use]
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the response is to be stored (the default).
    #[must_use]
    pub fn is_stored(&self) -> bool {
        self.store.unwrap_or(true)
    }

    /// What the types cannot say.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(name) = self.unknown.keys().next() {
            return Err(format!("Unsupported parameter: {name}"));
        }
        if self.model.trim().is_empty() {
            return Err("model must not be empty".into());
        }
        match &self.input {
            ResponseInput::Text(text) if text.is_empty() => return Err("input must not be empty".into()),
            ResponseInput::Items(items) if items.is_empty() => return Err("input must not be empty".into()),
            _ => {}
        }
        if self.max_output_tokens == Some(0) {
            return Err("max_output_tokens must be at least 1".into());
        }
        if self.background == Some(true) {
            return Err("background responses are not offered here; use a deferred chat completion".into());
        }
        if let Some(truncation) = self.truncation.as_deref()
            && !matches!(truncation, "auto" | "disabled")
        {
            return Err("truncation must be \"auto\" or \"disabled\"".into());
        }
        if let Some(metadata) = &self.metadata {
            if metadata.len() > MAX_METADATA_PAIRS {
                return Err(format!("metadata may have at most {MAX_METADATA_PAIRS} pairs"));
            }
            for (key, value) in metadata {
                let Some(value) = value.as_str() else {
                    return Err(format!("metadata.{key} must be a string"));
                };
                if key.len() > MAX_METADATA_KEY || value.len() > MAX_METADATA_VALUE {
                    return Err(format!(
                        "metadata keys may have at most {MAX_METADATA_KEY} characters and values {MAX_METADATA_VALUE}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The chat request for this turn after `history` (the stored conversation, as chat
    /// messages), and this turn's input as chat messages (to store after it).
    pub fn to_chat(&self, history: &[Value]) -> Result<ChatTurn, String> {
        let input = input_messages(&self.input)?;
        let mut messages = Vec::with_capacity(history.len() + input.len() + 1);
        if let Some(instructions) = &self.instructions {
            messages.push(json!({"role": "system", "content": instructions}));
        }
        messages.extend(history.iter().cloned());
        messages.extend(input.iter().cloned());
        let mut chat = Map::new();
        chat.insert("model".into(), Value::String(self.model.clone()));
        chat.insert("messages".into(), Value::Array(messages));
        if let Some(max) = self.max_output_tokens {
            chat.insert("max_tokens".into(), max.into());
        }
        if let Some(temperature) = &self.temperature {
            chat.insert("temperature".into(), Value::Number(temperature.clone()));
        }
        if let Some(top_p) = &self.top_p {
            chat.insert("top_p".into(), Value::Number(top_p.clone()));
        }
        if let Some(tools) = &self.tools
            && !tools.is_empty()
        {
            let tools = tools.iter().map(chat_tool).collect::<Result<Vec<_>, _>>()?;
            chat.insert("tools".into(), Value::Array(tools));
        }
        if let Some(choice) = &self.tool_choice {
            chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
        }
        if let Some(parallel) = self.parallel_tool_calls {
            chat.insert("parallel_tool_calls".into(), parallel.into());
        }
        if let Some(format) = self.text.as_ref().and_then(|text| text.get("format")) {
            if let Some(format) = response_format(format)? {
                chat.insert("response_format".into(), format);
            }
        }
        if let Some(effort) = self.reasoning.as_ref().and_then(|r| r.get("effort")) {
            match effort {
                Value::Null => {}
                Value::String(_) => {
                    chat.insert("reasoning_effort".into(), effort.clone());
                }
                _ => return Err("reasoning.effort must be a string".into()),
            }
        }
        if let Some(top) = self.top_logprobs {
            chat.insert("logprobs".into(), true.into());
            chat.insert("top_logprobs".into(), top.into());
        }
        if let Some(user) = &self.user {
            chat.insert("user".into(), Value::String(user.clone()));
        }
        if self.is_stream() {
            chat.insert("stream".into(), true.into());
        }
        let request: ChatCompletionRequest =
            serde_json::from_value(Value::Object(chat)).map_err(|e| format!("input: {e}"))?;
        Ok(ChatTurn { request, input })
    }
}

/// A turn as a chat request, and its input as chat messages.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    /// What the upstream is sent.
    pub request: ChatCompletionRequest,
    /// This turn's input, as chat messages (without the instructions).
    pub input: Vec<Value>,
}

fn input_messages(input: &ResponseInput) -> Result<Vec<Value>, String> {
    let items = match input {
        ResponseInput::Text(text) => return Ok(vec![json!({"role": "user", "content": text})]),
        ResponseInput::Items(items) => items,
    };
    let mut messages: Vec<Value> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let at = |what: &str| format!("input[{index}]: {what}");
        let Some(object) = item.as_object() else {
            return Err(at("an item must be an object"));
        };
        let kind = object.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => messages.push(input_message(object).map_err(|e| at(&e))?),
            Some("function_call") => {
                let call_id = string_field(object, "call_id").map_err(|e| at(&e))?;
                let name = string_field(object, "name").map_err(|e| at(&e))?;
                let arguments = string_field(object, "arguments").map_err(|e| at(&e))?;
                let call =
                    json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
                // Consecutive calls are one assistant turn, as chat completions has them.
                match messages.last_mut() {
                    Some(last) if last["role"] == "assistant" && last.get("tool_calls").is_some() => {
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => messages.push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            Some("function_call_output") => {
                let call_id = string_field(object, "call_id").map_err(|e| at(&e))?;
                let output = match object.get("output") {
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|part| part.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join(""),
                    _ => return Err(at("output must be a string")),
                };
                messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
            }
            // A reasoning item handed back is not sent again: the upstream reasons anew.
            Some("reasoning") => {}
            Some(other) => return Err(at(&format!("items of type {other} are not supported here"))),
        }
    }
    if messages.is_empty() {
        return Err("input must contain at least one message".into());
    }
    Ok(messages)
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    object
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("{name} must be a string"))
}

fn input_message(object: &Map<String, Value>) -> Result<Value, String> {
    let role = object.get("role").and_then(Value::as_str).ok_or("role is required")?;
    if !matches!(role, "user" | "system" | "developer" | "assistant") {
        return Err(format!("role must be user, system, developer or assistant, not {role}"));
    }
    let content = match object.get("content") {
        Some(Value::String(text)) => Value::String(text.clone()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                out.push(input_part(part)?);
            }
            if role == "assistant" || (role != "user" && out.iter().all(|part| part["type"] == "text")) {
                // Assistant (and system) turns are text in chat completions.
                let text: String = out.iter().filter_map(|part| part["text"].as_str()).collect();
                Value::String(text)
            } else {
                Value::Array(out)
            }
        }
        _ => return Err("content must be a string or a list of parts".into()),
    };
    Ok(json!({"role": role, "content": content}))
}

fn input_part(part: &Value) -> Result<Value, String> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "input_text" | "output_text" | "text" => {
            let text = part
                .get("text")
                .and_then(Value::as_str)
                .ok_or("a text part needs text")?;
            Ok(json!({"type": "text", "text": text}))
        }
        "refusal" => {
            let text = part.get("refusal").and_then(Value::as_str).unwrap_or("");
            Ok(json!({"type": "text", "text": text}))
        }
        "input_image" => {
            let url = part
                .get("image_url")
                .and_then(Value::as_str)
                .ok_or("an image part needs image_url (files are not offered here)")?;
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail").and_then(Value::as_str) {
                image["detail"] = Value::String(detail.to_owned());
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        "input_file" => Err("file inputs are not offered here".into()),
        other => Err(format!("content parts of type {other:?} are not supported")),
    }
}

fn chat_tool(tool: &Value) -> Result<Value, String> {
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
    if tollgate_domain::ServerTool::from_name(kind).is_some() {
        // A server-side tool, run by the platform: the chat request carries it as it is.
        return Ok(tool.clone());
    }
    if kind != "function" {
        return Err(format!(
            "The tool {kind:?} is not offered here: function tools are (run them yourself and send their output), \
             and the server-side web_search and x_search"
        ));
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or("a function tool needs a name")?;
    let mut function = json!({"name": name});
    for field in ["description", "parameters", "strict"] {
        if let Some(value) = tool.get(field)
            && !value.is_null()
        {
            function[field] = value.clone();
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

fn chat_tool_choice(choice: &Value) -> Result<Value, String> {
    match choice {
        Value::String(mode) if matches!(mode.as_str(), "auto" | "none" | "required") => Ok(choice.clone()),
        Value::Object(object) if object.get("type").and_then(Value::as_str) == Some("function") => {
            let name = object
                .get("name")
                .and_then(Value::as_str)
                .ok_or("tool_choice needs a name")?;
            Ok(json!({"type": "function", "function": {"name": name}}))
        }
        _ => Err("tool_choice must be auto, none, required or {\"type\":\"function\",\"name\":...}".into()),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, String> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for field in ["name", "schema", "strict", "description"] {
                if let Some(value) = format.get(field) {
                    schema.insert(field.into(), value.clone());
                }
            }
            if !schema.contains_key("schema") {
                return Err("text.format: a json_schema format needs a schema".into());
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err("text.format.type must be text, json_object or json_schema".into()),
    }
}

/// What a response echoes of its request, and its identity.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    /// `resp_…`.
    pub id: String,
    /// The suffix items' ids share (`msg_<suffix>`, `rs_<suffix>`, `fc_<suffix>_<n>`).
    pub item_suffix: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The public model name.
    pub model: String,
    echo: Map<String, Value>,
}

impl ResponseHead {
    /// The head of the response to `request`, served by `model`.
    #[must_use]
    pub fn new(id: String, item_suffix: String, created_at: i64, model: String, request: &ResponsesRequest) -> Self {
        let mut echo = Map::new();
        echo.insert("instructions".into(), json!(request.instructions));
        echo.insert("max_output_tokens".into(), json!(request.max_output_tokens));
        echo.insert(
            "parallel_tool_calls".into(),
            json!(request.parallel_tool_calls.unwrap_or(true)),
        );
        echo.insert("previous_response_id".into(), json!(request.previous_response_id));
        echo.insert("store".into(), json!(request.is_stored()));
        echo.insert("temperature".into(), json!(request.temperature));
        echo.insert("top_p".into(), json!(request.top_p));
        echo.insert("tools".into(), json!(request.tools.clone().unwrap_or_default()));
        echo.insert(
            "tool_choice".into(),
            request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        );
        echo.insert(
            "text".into(),
            request
                .text
                .clone()
                .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        );
        echo.insert(
            "reasoning".into(),
            request
                .reasoning
                .clone()
                .unwrap_or_else(|| json!({"effort": null, "summary": null})),
        );
        echo.insert(
            "metadata".into(),
            Value::Object(request.metadata.clone().unwrap_or_default()),
        );
        echo.insert("user".into(), json!(request.user));
        echo.insert(
            "truncation".into(),
            json!(request.truncation.as_deref().unwrap_or("disabled")),
        );
        echo.insert("background".into(), json!(false));
        Self {
            id,
            item_suffix,
            created_at,
            model,
            echo,
        }
    }

    /// The response object in `status`.
    #[must_use]
    pub fn object(&self, status: &str, output: Vec<Value>, usage: Option<Value>, end: End) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), Value::String(self.id.clone()));
        object.insert("object".into(), json!("response"));
        object.insert("created_at".into(), json!(self.created_at));
        object.insert("status".into(), json!(status));
        object.insert("model".into(), Value::String(self.model.clone()));
        object.insert("output".into(), Value::Array(output));
        object.insert("error".into(), end.error);
        object.insert("incomplete_details".into(), end.incomplete);
        object.insert("usage".into(), usage.unwrap_or(Value::Null));
        object.extend(self.echo.clone());
        Value::Object(object)
    }
}

/// How a response ended, beyond its status.
#[derive(Debug, Clone)]
pub struct End {
    error: Value,
    incomplete: Value,
}

impl End {
    /// Still going, or completed.
    #[must_use]
    pub fn none() -> Self {
        Self {
            error: Value::Null,
            incomplete: Value::Null,
        }
    }
}

/// The Responses API's `usage`, with xAI's cost.
#[must_use]
pub fn usage_json(usage: &TokenUsage, cost: Ticks) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_prompt_tokens},
        "output_tokens": usage.completion_tokens + usage.reasoning_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens(),
        "num_sources_used": 0,
        "num_server_side_tools_used": usage.server_side_tool_calls(),
        "server_side_tool_usage_details": crate::usage::server_side_tool_usage_details(usage),
        "cost_in_usd_ticks": cost.get(),
    })
}

/// What an item being produced is.
#[derive(Debug)]
enum Open {
    Nothing,
    Reasoning { index: usize, text: String },
    Message { index: usize, text: String },
}

#[derive(Debug)]
struct Call {
    index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// Builds a response from chat output, whole or chunk by chunk, with the stream's events.
#[derive(Debug)]
pub struct ResponseBuilder {
    head: ResponseHead,
    sequence: u64,
    items: Vec<Option<Value>>,
    open: Open,
    calls: Vec<(u64, Call)>,
    text: String,
    messages: u32,
    finish_reason: Option<String>,
    searches: u32,
    citations: Vec<String>,
}

/// A finished response.
#[derive(Debug, Clone)]
pub struct Finished {
    /// The response object.
    pub response: Value,
    /// The assistant's turn as a chat message, for the stored conversation.
    pub assistant: Value,
    /// The events closing a stream's items.
    pub events: Vec<String>,
}

impl ResponseBuilder {
    /// A response being built.
    #[must_use]
    pub fn new(head: ResponseHead) -> Self {
        Self {
            head,
            sequence: 0,
            items: Vec::new(),
            open: Open::Nothing,
            calls: Vec::new(),
            text: String::new(),
            messages: 0,
            finish_reason: None,
            searches: 0,
            citations: Vec::new(),
        }
    }

    /// A search the platform ran for the model (a server-side tool): a `web_search_call` or
    /// `x_search_call` item, `completed` with its query and the sources shown, or `failed`
    /// (`sources` is `None`). Its stream events.
    pub fn server_search(
        &mut self,
        tool: tollgate_domain::ServerTool,
        query: &str,
        sources: Option<&[String]>,
    ) -> Vec<String> {
        let mut events = Vec::new();
        self.close_open(&mut events);
        let index = self.new_index();
        self.searches += 1;
        let (kind, prefix) = match tool {
            tollgate_domain::ServerTool::WebSearch => ("web_search_call", "ws"),
            tollgate_domain::ServerTool::XSearch => ("x_search_call", "xs"),
        };
        let id = format!("{prefix}_{}_{}", self.head.item_suffix, self.searches);
        let added =
            json!({"type": kind, "id": id, "status": "in_progress", "action": {"type": "search", "query": query}});
        events.push(self.event(
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        ));
        // No sources: the search failed (a search with no results shows an empty list).
        let status = if sources.is_some() { "completed" } else { "failed" };
        let sources: Vec<Value> = sources
            .unwrap_or_default()
            .iter()
            .map(|url| json!({"type": "url", "url": url}))
            .collect();
        let done = json!({"type": kind, "id": id, "status": status,
            "action": {"type": "search", "query": query, "sources": sources}});
        events.push(self.event(
            &format!("response.{kind}.{status}"),
            json!({"output_index": index, "item_id": id}),
        ));
        events.push(self.event(
            "response.output_item.done",
            json!({"output_index": index, "item": done}),
        ));
        self.items[index] = Some(done);
        events
    }

    /// The URLs the answer draws on (xAI's `citations`), put on the finished response.
    pub fn cite(&mut self, citations: Vec<String>) {
        self.citations = citations;
    }

    /// The response's head.
    #[must_use]
    pub fn head(&self) -> &ResponseHead {
        &self.head
    }

    fn event(&mut self, kind: &str, mut data: Value) -> String {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {kind}\ndata: {data}\n\n")
    }

    /// A stream's first events: `response.created`, `response.in_progress`.
    pub fn start(&mut self) -> Vec<String> {
        let response = self.head.object("in_progress", Vec::new(), None, End::none());
        vec![
            self.event("response.created", json!({"response": response})),
            self.event("response.in_progress", json!({"response": response})),
        ]
    }

    fn new_index(&mut self) -> usize {
        self.items.push(None);
        self.items.len() - 1
    }

    fn close_open(&mut self, events: &mut Vec<String>) {
        match std::mem::replace(&mut self.open, Open::Nothing) {
            Open::Nothing => {}
            Open::Reasoning { index, text } => {
                let id = format!("rs_{}", self.head.item_suffix);
                let part = json!({"type": "summary_text", "text": text});
                events.push(self.event(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text}),
                ));
                events.push(self.event(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": index, "summary_index": 0, "part": part}),
                ));
                let item = json!({"type": "reasoning", "id": id, "status": "completed", "summary": [part]});
                events.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                self.items[index] = Some(item);
            }
            Open::Message { index, text } => {
                let id = self.message_id();
                let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                events.push(self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                ));
                events.push(self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                ));
                let item =
                    json!({"type": "message", "id": id, "status": "completed", "role": "assistant", "content": [part]});
                events.push(self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                ));
                self.items[index] = Some(item);
            }
        }
    }

    fn message_id(&self) -> String {
        if self.messages <= 1 {
            format!("msg_{}", self.head.item_suffix)
        } else {
            format!("msg_{}_{}", self.head.item_suffix, self.messages)
        }
    }

    fn reasoning(&mut self, delta: &str, events: &mut Vec<String>) {
        if !matches!(self.open, Open::Reasoning { .. }) {
            self.close_open(events);
            let index = self.new_index();
            let id = format!("rs_{}", self.head.item_suffix);
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"type": "reasoning", "id": id, "status": "in_progress", "summary": []}}),
            ));
            events.push(self.event(
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
            ));
            self.open = Open::Reasoning {
                index,
                text: String::new(),
            };
        }
        let Open::Reasoning { index, text } = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let index = *index;
        let id = format!("rs_{}", self.head.item_suffix);
        events.push(self.event(
            "response.reasoning_summary_text.delta",
            json!({"item_id": id, "output_index": index, "summary_index": 0, "delta": delta}),
        ));
    }

    fn content(&mut self, delta: &str, events: &mut Vec<String>) {
        if !matches!(self.open, Open::Message { .. }) {
            self.close_open(events);
            self.messages += 1;
            let index = self.new_index();
            let id = self.message_id();
            events.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}),
            ));
            events.push(self.event(
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            ));
            self.open = Open::Message {
                index,
                text: String::new(),
            };
        }
        self.text.push_str(delta);
        let id = self.message_id();
        let Open::Message { index, text } = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let index = *index;
        events.push(self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
        ));
    }

    /// A tool call's part: its chat stream index, and what arrived of it.
    fn tool_call(&mut self, call: &Value, events: &mut Vec<String>) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let function = &call["function"];
        let known = self.calls.iter().position(|(index, _)| *index == chat_index);
        let position = match known {
            // A whole call in one piece (xAI sends them so) that reuses an index is a new call.
            Some(position)
                if call
                    .get("id")
                    .is_none_or(|id| id.as_str() == Some(&self.calls[position].1.call_id)) =>
            {
                position
            }
            _ => {
                self.close_open(events);
                let index = self.new_index();
                let number = self.calls.len();
                let call = Call {
                    index,
                    id: format!("fc_{}_{number}", self.head.item_suffix),
                    call_id: call
                        .get("id")
                        .and_then(Value::as_str)
                        .map_or_else(|| format!("call_{}_{number}", self.head.item_suffix), str::to_owned),
                    name: function.get("name").and_then(Value::as_str).unwrap_or("").to_owned(),
                    arguments: String::new(),
                };
                let item = json!({"type": "function_call", "id": call.id, "call_id": call.call_id, "name": call.name,
                    "arguments": "", "status": "in_progress"});
                events.push(self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                ));
                self.calls.push((chat_index, call));
                self.calls.len() - 1
            }
        };
        if let Some(name) = function.get("name").and_then(Value::as_str)
            && self.calls[position].1.name.is_empty()
        {
            name.clone_into(&mut self.calls[position].1.name);
        }
        if let Some(delta) = function.get("arguments").and_then(Value::as_str)
            && !delta.is_empty()
        {
            self.calls[position].1.arguments.push_str(delta);
            let (id, index) = (self.calls[position].1.id.clone(), self.calls[position].1.index);
            events.push(self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": index, "delta": delta}),
            ));
        }
    }

    /// One chat delta (`choices[0].delta` of a chunk, or a whole message): the events it makes.
    pub fn delta(&mut self, delta: &Value) -> Vec<String> {
        let mut events = Vec::new();
        if let Some(reasoning) = delta.get("reasoning_content").and_then(Value::as_str)
            && !reasoning.is_empty()
        {
            self.reasoning(reasoning, &mut events);
        }
        if let Some(content) = delta.get("content").and_then(Value::as_str)
            && !content.is_empty()
        {
            self.content(content, &mut events);
        }
        if let Some(refusal) = delta.get("refusal").and_then(Value::as_str)
            && !refusal.is_empty()
        {
            self.content(refusal, &mut events);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                let mut call = call.clone();
                // A whole message's calls carry no index: their position is it.
                if call.get("index").is_none() {
                    call["index"] = json!(position);
                }
                self.tool_call(&call, &mut events);
            }
        }
        events
    }

    /// A chat chunk (only its first choice makes the response): the events it makes.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<String> {
        let Some(choice) = chunk["choices"].as_array().and_then(|choices| choices.first()) else {
            return Vec::new();
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_owned());
        }
        self.delta(&choice["delta"])
    }

    /// A whole chat answer (its first choice).
    pub fn answer(&mut self, answer: &Value) {
        if let Some(choice) = answer["choices"].as_array().and_then(|choices| choices.first()) {
            if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
                self.finish_reason = Some(reason.to_owned());
            }
            let _ = self.delta(&choice["message"]);
        }
    }

    /// Closes every item and ends the response with `usage`. The stream's last event is
    /// [`Self::end`]'s (or [`Self::fail`]'s, should keeping the response fail).
    pub fn finish(&mut self, usage: Value) -> Finished {
        let mut events = Vec::new();
        self.close_open(&mut events);
        let calls = std::mem::take(&mut self.calls);
        let mut chat_calls = Vec::with_capacity(calls.len());
        for (_, call) in calls {
            events.push(self.event(
                "response.function_call_arguments.done",
                json!({"item_id": call.id, "output_index": call.index, "arguments": call.arguments}),
            ));
            let item = json!({"type": "function_call", "id": call.id, "call_id": call.call_id, "name": call.name,
                "arguments": call.arguments, "status": "completed"});
            events.push(self.event(
                "response.output_item.done",
                json!({"output_index": call.index, "item": item}),
            ));
            self.items[call.index] = Some(item);
            chat_calls.push(json!({"id": call.call_id, "type": "function",
                "function": {"name": call.name, "arguments": call.arguments}}));
        }
        let output: Vec<Value> = self.items.iter().flatten().cloned().collect();
        let incomplete = match self.finish_reason.as_deref() {
            Some("length") => Some("max_output_tokens"),
            Some("content_filter") => Some("content_filter"),
            _ => None,
        };
        let (status, end) = match incomplete {
            Some(reason) => (
                "incomplete",
                End {
                    error: Value::Null,
                    incomplete: json!({"reason": reason}),
                },
            ),
            None => ("completed", End::none()),
        };
        let mut response = self.head.object(status, output, Some(usage), end);
        if !self.citations.is_empty() {
            response["citations"] = json!(self.citations);
        }
        if status == "completed" {
            response["completed_at"] = json!(self.head.created_at);
        }
        let mut assistant = json!({"role": "assistant", "content": if self.text.is_empty() { Value::Null } else { Value::String(self.text.clone()) }});
        if !chat_calls.is_empty() {
            assistant["tool_calls"] = Value::Array(chat_calls);
        }
        Finished {
            response,
            assistant,
            events,
        }
    }

    /// A finished stream's last event: `response.completed`, or `response.incomplete` when the
    /// answer was cut short by its budget or a filter.
    pub fn end(&mut self, response: &Value) -> String {
        let kind = if response["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.event(kind, json!({"response": response}))
    }

    /// Ends a stream that failed: `response.failed` with the error, and the items finished so far.
    pub fn fail(&mut self, code: &str, message: &str) -> String {
        let output: Vec<Value> = self.items.iter().flatten().cloned().collect();
        let response = self.head.object(
            "failed",
            output,
            None,
            End {
                error: json!({"code": code, "message": message}),
                incomplete: Value::Null,
            },
        );
        self.event("response.failed", json!({"response": response}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ResponsesRequest {
        serde_json::from_value(body).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn head(request: &ResponsesRequest) -> ResponseHead {
        ResponseHead::new("resp_1".into(), "1".into(), 100, "grok".into(), request)
    }

    #[test]
    fn text_input_with_instructions_after_the_history() {
        let body = request(
            json!({"model": "m", "input": "again", "instructions": "be brief", "max_output_tokens": 50,
            "temperature": 0.5, "text": {"format": {"type": "json_object"}}, "reasoning": {"effort": "low"}}),
        );
        body.validate().unwrap();
        let history = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "hello"}),
        ];
        let turn = body.to_chat(&history).unwrap();
        let chat = serde_json::to_value(&turn.request).unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
            ])
        );
        assert_eq!(turn.input, vec![json!({"role": "user", "content": "again"})]);
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["temperature"], 0.5);
        assert_eq!(chat["response_format"], json!({"type": "json_object"}));
        assert_eq!(chat["reasoning_effort"], "low");
    }

    #[test]
    fn items_become_chat_messages() {
        let body = request(json!({"model": "m", "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "one"},
            {"type": "reasoning", "id": "rs_x", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        ], "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
           "tool_choice": {"type": "function", "name": "f"}}));
        let chat = serde_json::to_value(body.to_chat(&[]).unwrap().request).unwrap();
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}]},
                {"role": "assistant", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "assistant", "content": "ok"},
            ])
        );
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "f"}})
        );
    }

    #[test]
    fn what_is_not_offered_is_refused_by_name() {
        let unknown = request(json!({"model": "m", "input": "x", "conversation": "c"}));
        assert_eq!(unknown.validate().unwrap_err(), "Unsupported parameter: conversation");
        let code = request(json!({"model": "m", "input": "x", "tools": [{"type": "code_interpreter"}]}));
        assert!(
            code.to_chat(&[])
                .unwrap_err()
                .contains("\"code_interpreter\" is not offered")
        );
        // Server-side searches pass to the chat request, whose tool loop runs them.
        let search = request(json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}));
        assert_eq!(
            search.to_chat(&[]).unwrap().request.extra["tools"],
            json!([{"type": "web_search"}])
        );
        let file = request(
            json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
        );
        assert!(file.to_chat(&[]).unwrap_err().contains("file inputs"));
        let empty = request(json!({"model": "m", "input": []}));
        assert!(empty.validate().is_err());
        let background = request(json!({"model": "m", "input": "x", "background": true}));
        assert!(background.validate().is_err());
        let role = request(json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}));
        assert!(role.to_chat(&[]).unwrap_err().starts_with("input[0]: role"));
    }

    #[test]
    fn a_whole_answer_becomes_output_items() {
        let body = request(json!({"model": "m", "input": "x"}));
        let mut builder = ResponseBuilder::new(head(&body));
        builder.answer(&json!({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hi.", "reasoning_content": "think",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}));
        let usage = usage_json(
            &TokenUsage {
                prompt_tokens: 10,
                cached_prompt_tokens: 2,
                completion_tokens: 3,
                reasoning_tokens: 4,
                ..TokenUsage::default()
            },
            Ticks::new(99),
        );
        let done = builder.finish(usage);
        let output = done.response["output"].as_array().unwrap();
        assert_eq!(output.len(), 3);
        assert_eq!(
            output[0],
            json!({"type": "reasoning", "id": "rs_1", "status": "completed", "summary": [{"type": "summary_text", "text": "think"}]})
        );
        assert_eq!(output[1]["id"], "msg_1");
        assert_eq!(output[1]["content"][0]["text"], "Hi.");
        assert_eq!(output[2]["call_id"], "call_1");
        assert_eq!(output[2]["status"], "completed");
        assert_eq!(done.response["status"], "completed");
        assert_eq!(done.response["usage"]["output_tokens"], 7);
        assert_eq!(done.response["usage"]["total_tokens"], 17);
        assert_eq!(done.response["usage"]["cost_in_usd_ticks"], 99);
        assert_eq!(
            done.assistant,
            json!({"role": "assistant", "content": "Hi.", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
        );
    }

    fn events_of(lines: &[String]) -> Vec<(String, Value)> {
        lines
            .iter()
            .map(|event| {
                let (kind, data) = event.trim_end().split_once('\n').unwrap();
                let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], kind.strip_prefix("event: ").unwrap());
                (kind.strip_prefix("event: ").unwrap().to_owned(), data)
            })
            .collect()
    }

    #[test]
    fn a_stream_becomes_typed_events_in_sequence() {
        let body = request(json!({"model": "m", "input": "x", "stream": true}));
        let mut builder = ResponseBuilder::new(head(&body));
        let mut lines = builder.start();
        let chunk =
            |delta: Value, finish: Value| json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        lines.extend(builder.chunk(&chunk(
            json!({"role": "assistant", "reasoning_content": "hm"}),
            Value::Null,
        )));
        lines.extend(builder.chunk(&chunk(json!({"content": "Hel"}), Value::Null)));
        lines.extend(builder.chunk(&chunk(json!({"content": "lo"}), Value::Null)));
        lines.extend(builder.chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{\"a\""}}]}),
            Value::Null,
        )));
        lines.extend(builder.chunk(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            json!("tool_calls"),
        )));
        let done = builder.finish(json!({"total_tokens": 1}));
        lines.extend(done.events.iter().cloned());
        lines.push(builder.end(&done.response));
        let events = events_of(&lines);
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.reasoning_summary_text.delta",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        for (number, (_, data)) in events.iter().enumerate() {
            assert_eq!(data["sequence_number"], number as u64);
        }
        let completed = &events.last().unwrap().1["response"];
        assert_eq!(completed["output"][1]["content"][0]["text"], "Hello");
        assert_eq!(completed["output"][2]["arguments"], "{\"a\":1}");
        assert_eq!(done.assistant["content"], "Hello");
    }

    #[test]
    fn a_cut_answer_is_incomplete() {
        let body = request(json!({"model": "m", "input": "x"}));
        let mut builder = ResponseBuilder::new(head(&body));
        builder.answer(&json!({"choices": [{"finish_reason": "length", "message": {"content": "Hi"}}]}));
        let done = builder.finish(Value::Null);
        assert_eq!(done.response["status"], "incomplete");
        assert_eq!(
            done.response["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert!(builder.end(&done.response).starts_with("event: response.incomplete\n"));
        let failed = ResponseBuilder::new(head(&body)).fail("server_error", "boom");
        let (_, data) = events_of(&[failed]).pop().unwrap();
        assert_eq!(data["response"]["status"], "failed");
        assert_eq!(data["response"]["error"]["message"], "boom");
    }
}
