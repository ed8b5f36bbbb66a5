//! Between xAI's gRPC messages and the OpenAI-compatible chat shape the inference use case
//! speaks: a `GetCompletionsRequest` becomes a chat request (so both surfaces run the same
//! validation, tools and billing), and a chat answer or chunk becomes the SDK's messages.

use prost_types::Timestamp;
use serde_json::{Map, Value, json};
use tollgate_core::SearchCall;
use tollgate_domain::{ServerTool, Ticks, TokenUsage};

use crate::proto::{
    self, CompletionMessage, CompletionOutput, CompletionOutputChunk, Delta, FinishReason, FormatType,
    GetChatCompletionChunk, GetChatCompletionResponse, GetCompletionsRequest, LogProbs, MessageRole, ReasoningEffort,
    SamplingUsage, ServerSideTool, ToolCall, ToolCallStatus, ToolCallType, ToolMode,
};

/// A request the chat shape cannot carry, or that names something not offered: the reason,
/// for an `INVALID_ARGUMENT`.
pub(crate) type Invalid = String;

/// The chat request (OpenAI's JSON) for `request`. Fields Tollgate does not serve and that
/// change nothing for the answer (`include`, `use_encrypted_content`, `service_tier`,
/// `agent_count`, `guidelines`, `max_turns`) are accepted and ignored, as the SDK may always
/// send them; what would change the answer and is not offered is refused.
pub(crate) fn chat_request(request: &GetCompletionsRequest) -> Result<Value, Invalid> {
    if request.messages.is_empty() {
        return Err("messages must not be empty".into());
    }
    let messages = request
        .messages
        .iter()
        .enumerate()
        .map(|(index, message)| message_json(message).map_err(|reason| format!("messages[{index}]: {reason}")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut chat = Map::new();
    chat.insert("model".into(), json!(request.model));
    chat.insert("messages".into(), Value::Array(messages));
    let user = if request.user.is_empty() {
        request.safety_identifier.as_deref().unwrap_or_default()
    } else {
        &request.user
    };
    if !user.is_empty() {
        chat.insert("user".into(), json!(user));
    }
    if let Some(n) = request.n {
        chat.insert("n".into(), json!(n));
    }
    if let Some(max_tokens) = request.max_tokens {
        chat.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(seed) = request.seed {
        chat.insert("seed".into(), json!(seed));
    }
    if !request.stop.is_empty() {
        chat.insert("stop".into(), json!(request.stop));
    }
    for (name, value) in [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("frequency_penalty", request.frequency_penalty),
        ("presence_penalty", request.presence_penalty),
    ] {
        if let Some(value) = value {
            // Through its shortest decimal text, so 0.7f32 is 0.7 and not 0.699999988079071.
            let exact: f64 = value.to_string().parse().unwrap_or(f64::from(value));
            chat.insert(name.into(), json!(exact));
        }
    }
    if request.logprobs {
        chat.insert("logprobs".into(), json!(true));
    }
    if let Some(top) = request.top_logprobs {
        chat.insert("top_logprobs".into(), json!(top));
    }
    if !request.tools.is_empty() {
        let tools = request
            .tools
            .iter()
            .enumerate()
            .map(|(index, tool)| tool_json(tool).map_err(|reason| format!("tools[{index}]: {reason}")))
            .collect::<Result<Vec<_>, _>>()?;
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request
        .tool_choice
        .as_ref()
        .and_then(|choice| choice.tool_choice.as_ref())
    {
        let choice = match choice {
            proto::tool_choice::ToolChoice::Mode(mode) => match ToolMode::try_from(*mode) {
                Ok(ToolMode::Auto) => json!("auto"),
                Ok(ToolMode::None) => json!("none"),
                Ok(ToolMode::Required) => json!("required"),
                _ => return Err("tool_choice: mode must be auto, none or required".into()),
            },
            proto::tool_choice::ToolChoice::FunctionName(name) => {
                json!({"type": "function", "function": {"name": name}})
            }
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(format) = &request.response_format {
        let format = match FormatType::try_from(format.format_type) {
            Ok(FormatType::Text) => json!({"type": "text"}),
            Ok(FormatType::JsonObject) => json!({"type": "json_object"}),
            Ok(FormatType::JsonSchema) => {
                let schema = format.schema.as_deref().unwrap_or("{}");
                let schema: Value = serde_json::from_str(schema)
                    .map_err(|_| "response_format: schema must be a JSON object".to_owned())?;
                if !schema.is_object() {
                    return Err("response_format: schema must be a JSON object".into());
                }
                json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}})
            }
            _ => return Err("response_format: format_type must be text, json_object or json_schema".into()),
        };
        chat.insert("response_format".into(), format);
    }
    if let Some(effort) = request.reasoning_effort {
        let effort = match ReasoningEffort::try_from(effort) {
            Ok(ReasoningEffort::EffortLow) => "low",
            Ok(ReasoningEffort::EffortMedium) => "medium",
            Ok(ReasoningEffort::EffortHigh) => "high",
            Ok(ReasoningEffort::EffortNone) => "none",
            Ok(ReasoningEffort::EffortXhigh) => "xhigh",
            _ => return Err("reasoning_effort is not a known effort".into()),
        };
        chat.insert("reasoning_effort".into(), json!(effort));
    }
    if let Some(parallel) = request.parallel_tool_calls {
        chat.insert("parallel_tool_calls".into(), json!(parallel));
    }
    if let Some(search) = &request.search_parameters {
        chat.insert("search_parameters".into(), search_parameters_json(search)?);
    }
    Ok(Value::Object(chat))
}

fn message_json(message: &proto::Message) -> Result<Value, Invalid> {
    #[allow(deprecated)]
    let role = match MessageRole::try_from(message.role) {
        Ok(MessageRole::RoleUser) => "user",
        Ok(MessageRole::RoleAssistant) => "assistant",
        Ok(MessageRole::RoleSystem) => "system",
        Ok(MessageRole::RoleDeveloper) => "developer",
        Ok(MessageRole::RoleTool) => "tool",
        Ok(MessageRole::RoleFunction) => "function",
        Ok(MessageRole::InvalidRole) | Err(_) => return Err("role must be set".into()),
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    let text_only = message
        .content
        .iter()
        .all(|part| matches!(part.content, Some(proto::content::Content::Text(_))));
    if text_only {
        let text: String = message
            .content
            .iter()
            .filter_map(|part| match &part.content {
                Some(proto::content::Content::Text(text)) => Some(text.as_str()),
                _ => None,
            })
            .collect();
        if !(text.is_empty() && role == "assistant" && !message.tool_calls.is_empty()) {
            out.insert("content".into(), json!(text));
        }
    } else {
        let parts = message
            .content
            .iter()
            .map(|part| match &part.content {
                Some(proto::content::Content::Text(text)) => Ok(json!({"type": "text", "text": text})),
                Some(proto::content::Content::ImageUrl(image)) => match &image.source {
                    Some(proto::image_url_content::Source::ImageUrl(url)) => {
                        let detail = match proto::ImageDetail::try_from(image.detail) {
                            Ok(proto::ImageDetail::DetailLow) => "low",
                            Ok(proto::ImageDetail::DetailHigh) => "high",
                            _ => "auto",
                        };
                        Ok(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}))
                    }
                    _ => Err("images are taken by URL here (uploaded files are not offered)".to_owned()),
                },
                Some(proto::content::Content::File(_)) => Err("file attachments are not offered here".to_owned()),
                None => Err("a content part must be set".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("content".into(), Value::Array(parts));
    }
    if !message.name.is_empty() {
        out.insert("name".into(), json!(message.name));
    }
    if !message.tool_calls.is_empty() {
        let calls = message
            .tool_calls
            .iter()
            .map(|call| match &call.tool {
                Some(proto::tool_call::Tool::Function(function)) => Ok(json!({"id": call.id, "type": "function",
                    "function": {"name": function.name, "arguments": function.arguments}})),
                None => Err("a tool call must name its function".to_owned()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), json!(id));
    }
    Ok(Value::Object(out))
}

fn tool_json(tool: &proto::Tool) -> Result<Value, Invalid> {
    match &tool.tool {
        Some(proto::tool::Tool::Function(function)) => {
            let parameters: Value = if function.parameters.is_empty() {
                json!({"type": "object", "properties": {}})
            } else {
                serde_json::from_str(&function.parameters)
                    .map_err(|_| format!("the parameters of function {} are not JSON", function.name))?
            };
            let mut out = json!({"type": "function", "function": {"name": function.name, "parameters": parameters}});
            if !function.description.is_empty() {
                out["function"]["description"] = json!(function.description);
            }
            if function.strict {
                out["function"]["strict"] = json!(true);
            }
            Ok(out)
        }
        Some(proto::tool::Tool::WebSearch(search)) => {
            let mut out = json!({"type": "web_search"});
            if !search.allowed_domains.is_empty() {
                out["allowed_domains"] = json!(search.allowed_domains);
            }
            if !search.excluded_domains.is_empty() {
                out["excluded_domains"] = json!(search.excluded_domains);
            }
            if let Some(on) = search.enable_image_understanding {
                out["enable_image_understanding"] = json!(on);
            }
            if search.enable_image_search == Some(true) {
                return Err(
                    "web_search.enable_image_search is not offered here: results are given to the model as text".into(),
                );
            }
            // `user_location` only tunes a backend's ranking: not offered, so not applied.
            Ok(out)
        }
        Some(proto::tool::Tool::XSearch(search)) => {
            let mut out = json!({"type": "x_search"});
            if !search.allowed_x_handles.is_empty() {
                out["allowed_x_handles"] = json!(search.allowed_x_handles);
            }
            if !search.excluded_x_handles.is_empty() {
                out["excluded_x_handles"] = json!(search.excluded_x_handles);
            }
            if let Some(from) = &search.from_date {
                out["from_date"] = json!(date(from)?);
            }
            if let Some(to) = &search.to_date {
                out["to_date"] = json!(date(to)?);
            }
            if let Some(on) = search.enable_image_understanding {
                out["enable_image_understanding"] = json!(on);
            }
            if let Some(on) = search.enable_video_understanding {
                out["enable_video_understanding"] = json!(on);
            }
            Ok(out)
        }
        Some(
            proto::tool::Tool::CodeExecution(_)
            | proto::tool::Tool::CollectionsSearch(_)
            | proto::tool::Tool::Mcp(_)
            | proto::tool::Tool::AttachmentSearch(_)
            | proto::tool::Tool::ImageGeneration(_),
        ) => Err("this server-side tool is not offered here (web_search and x_search are)".into()),
        None => Err("a tool must be set".into()),
    }
}

fn search_parameters_json(search: &proto::SearchParameters) -> Result<Value, Invalid> {
    let mode = match proto::SearchMode::try_from(search.mode) {
        Ok(proto::SearchMode::OffSearchMode) => "off",
        Ok(proto::SearchMode::OnSearchMode) => "on",
        Ok(proto::SearchMode::AutoSearchMode | proto::SearchMode::InvalidSearchMode) | Err(_) => "auto",
    };
    let mut out = json!({"mode": mode, "return_citations": search.return_citations});
    let sources = search
        .sources
        .iter()
        .filter_map(|source| match &source.source {
            Some(proto::source::Source::Web(web)) => Some(listing(
                "web",
                [
                    ("allowed_websites", &web.allowed_websites),
                    ("excluded_websites", &web.excluded_websites),
                ],
            )),
            Some(proto::source::Source::News(news)) => {
                Some(listing("news", [("excluded_websites", &news.excluded_websites)]))
            }
            Some(proto::source::Source::X(x)) => Some(listing(
                "x",
                [
                    ("included_x_handles", &x.included_x_handles),
                    ("excluded_x_handles", &x.excluded_x_handles),
                ],
            )),
            Some(proto::source::Source::Rss(_)) => Some(json!({"type": "rss"})),
            None => None,
        })
        .collect::<Vec<_>>();
    if !sources.is_empty() {
        out["sources"] = Value::Array(sources);
    }
    if let Some(from) = &search.from_date {
        out["from_date"] = json!(date(from)?);
    }
    if let Some(to) = &search.to_date {
        out["to_date"] = json!(date(to)?);
    }
    if let Some(max) = search.max_search_results {
        out["max_search_results"] = json!(max);
    }
    Ok(out)
}

/// A Live Search source of `kind` with the lists it names (empty ones left out).
fn listing<const N: usize>(kind: &str, lists: [(&str, &Vec<String>); N]) -> Value {
    let mut out = json!({"type": kind});
    for (name, list) in lists {
        if !list.is_empty() {
            out[name] = json!(list);
        }
    }
    out
}

/// A timestamp as the `YYYY-MM-DD` date the search options take.
fn date(timestamp: &Timestamp) -> Result<String, Invalid> {
    chrono::DateTime::from_timestamp(timestamp.seconds, 0)
        .map(|at| at.format("%Y-%m-%d").to_string())
        .ok_or_else(|| "a date is out of range".to_owned())
}

/// xAI's usage: `prompt_text_tokens` are the uncached ones; every server-side tool call is
/// listed; the cost is always set (the SDK reads it only when present).
pub(crate) fn usage(usage: &TokenUsage, cost: Ticks) -> SamplingUsage {
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    let mut tools = Vec::new();
    for _ in 0..usage.web_search_calls.min(1_000) {
        tools.push(ServerSideTool::WebSearch as i32);
    }
    for _ in 0..usage.x_search_calls.min(1_000) {
        tools.push(ServerSideTool::XSearch as i32);
    }
    SamplingUsage {
        completion_tokens: count(usage.completion_tokens),
        reasoning_tokens: count(usage.reasoning_tokens),
        prompt_tokens: count(usage.prompt_tokens),
        total_tokens: count(usage.total_tokens()),
        prompt_text_tokens: count(usage.prompt_tokens.saturating_sub(usage.cached_prompt_tokens)),
        cached_prompt_text_tokens: count(usage.cached_prompt_tokens),
        prompt_image_tokens: 0,
        num_sources_used: 0,
        server_side_tools_used: tools,
        cost_in_usd_ticks: Some(cost.get()),
    }
}

fn finish_reason(reason: &Value) -> i32 {
    let reason = match reason.as_str() {
        Some("stop" | "content_filter" | "end_turn") => FinishReason::ReasonStop,
        Some("length") => FinishReason::ReasonMaxLen,
        Some("tool_calls" | "function_call") => FinishReason::ReasonToolCalls,
        Some(_) => FinishReason::ReasonStop,
        None => FinishReason::ReasonInvalid,
    };
    reason as i32
}

fn timestamp(created: &Value) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: created.as_i64()?,
        nanos: 0,
    })
}

/// The client's own function calls in a message or delta.
fn tool_calls(calls: &Value) -> Vec<ToolCall> {
    calls
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| ToolCall {
            id: call["id"].as_str().unwrap_or_default().to_owned(),
            r#type: ToolCallType::ClientSideTool as i32,
            status: ToolCallStatus::Completed as i32,
            error_message: None,
            tool: Some(proto::tool_call::Tool::Function(proto::FunctionCall {
                name: call["function"]["name"].as_str().unwrap_or_default().to_owned(),
                arguments: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
            })),
        })
        .collect()
}

fn logprobs(logprobs: &Value) -> Option<LogProbs> {
    let content = logprobs.get("content")?.as_array()?;
    let bytes = |entry: &Value| -> Vec<u8> {
        entry["bytes"]
            .as_array()
            .map(|bytes| {
                bytes
                    .iter()
                    .filter_map(Value::as_u64)
                    .filter_map(|b| u8::try_from(b).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    #[allow(clippy::cast_possible_truncation)]
    let logprob = |entry: &Value| entry["logprob"].as_f64().unwrap_or_default() as f32;
    Some(LogProbs {
        content: content
            .iter()
            .map(|entry| proto::LogProb {
                token: entry["token"].as_str().unwrap_or_default().to_owned(),
                logprob: logprob(entry),
                bytes: bytes(entry),
                top_logprobs: entry["top_logprobs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|top| proto::TopLogProb {
                        token: top["token"].as_str().unwrap_or_default().to_owned(),
                        logprob: logprob(top),
                        bytes: bytes(top),
                    })
                    .collect(),
            })
            .collect(),
    })
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A whole chat answer as the SDK's response: the public `model`, the usage with its cost, and
/// the searches' citations.
pub(crate) fn response(
    answer: &Value,
    model: &str,
    usage: &TokenUsage,
    cost: Ticks,
    citations: Vec<String>,
) -> GetChatCompletionResponse {
    let outputs = answer["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(position, choice)| {
            let message = &choice["message"];
            CompletionOutput {
                finish_reason: finish_reason(&choice["finish_reason"]),
                index: choice["index"]
                    .as_i64()
                    .and_then(|index| i32::try_from(index).ok())
                    .unwrap_or(i32::try_from(position).unwrap_or_default()),
                message: Some(CompletionMessage {
                    content: text(&message["content"]),
                    reasoning_content: text(&message["reasoning_content"]),
                    role: MessageRole::RoleAssistant as i32,
                    tool_calls: tool_calls(&message["tool_calls"]),
                    encrypted_content: String::new(),
                    citations: Vec::new(),
                }),
                logprobs: logprobs(&choice["logprobs"]),
            }
        })
        .collect();
    GetChatCompletionResponse {
        id: text(&answer["id"]),
        outputs,
        created: timestamp(&answer["created"]),
        model: model.to_owned(),
        system_fingerprint: text(&answer["system_fingerprint"]),
        usage: Some(self::usage(usage, cost)),
        citations,
        ..GetChatCompletionResponse::default()
    }
}

/// One streamed chat chunk as the SDK's: every output says it is the assistant's (the SDK reads
/// only the assistant's outputs, chunk by chunk).
pub(crate) fn chunk(chunk: &Value, model: &str) -> GetChatCompletionChunk {
    let outputs = chunk["choices"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(position, choice)| {
            let delta = &choice["delta"];
            CompletionOutputChunk {
                delta: Some(Delta {
                    content: text(&delta["content"]),
                    reasoning_content: text(&delta["reasoning_content"]),
                    role: MessageRole::RoleAssistant as i32,
                    tool_calls: tool_calls(&delta["tool_calls"]),
                    encrypted_content: String::new(),
                    citations: Vec::new(),
                }),
                logprobs: logprobs(&choice["logprobs"]),
                finish_reason: finish_reason(&choice["finish_reason"]),
                index: choice["index"]
                    .as_i64()
                    .and_then(|index| i32::try_from(index).ok())
                    .unwrap_or(i32::try_from(position).unwrap_or_default()),
            }
        })
        .collect();
    GetChatCompletionChunk {
        id: text(&chunk["id"]),
        outputs,
        created: timestamp(&chunk["created"]),
        model: model.to_owned(),
        system_fingerprint: text(&chunk["system_fingerprint"]),
        ..GetChatCompletionChunk::default()
    }
}

/// A search the platform ran, as a chunk of one tool call of the search's type (the client does
/// not run it): its query as the arguments, and whether it succeeded.
pub(crate) fn search_chunk(call: &SearchCall, id: &str, model: &str) -> GetChatCompletionChunk {
    let (kind, status, error) = (
        match call.tool {
            ServerTool::WebSearch => ToolCallType::WebSearchTool,
            ServerTool::XSearch => ToolCallType::XSearchTool,
        },
        if call.outcome.is_ok() {
            ToolCallStatus::Completed
        } else {
            ToolCallStatus::Failed
        },
        call.outcome.as_ref().err().map(|_| "the search failed".to_owned()),
    );
    GetChatCompletionChunk {
        id: id.to_owned(),
        outputs: vec![CompletionOutputChunk {
            delta: Some(Delta {
                role: MessageRole::RoleAssistant as i32,
                tool_calls: vec![ToolCall {
                    id: call.call_id.clone(),
                    r#type: kind as i32,
                    status: status as i32,
                    error_message: error,
                    tool: Some(proto::tool_call::Tool::Function(proto::FunctionCall {
                        name: call.tool.as_str().to_owned(),
                        arguments: json!({"query": call.query}).to_string(),
                    })),
                }],
                ..Delta::default()
            }),
            ..CompletionOutputChunk::default()
        }],
        model: model.to_owned(),
        ..GetChatCompletionChunk::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> proto::Message {
        proto::Message {
            role: MessageRole::RoleUser as i32,
            content: vec![proto::Content {
                content: Some(proto::content::Content::Text(text.into())),
            }],
            ..proto::Message::default()
        }
    }

    #[test]
    fn a_request_becomes_the_chat_shape() {
        let request = GetCompletionsRequest {
            model: "grok".into(),
            messages: vec![user("hi")],
            n: Some(1),
            max_tokens: Some(5),
            temperature: Some(0.7),
            tools: vec![proto::Tool {
                tool: Some(proto::tool::Tool::Function(proto::Function {
                    name: "weather".into(),
                    parameters: r#"{"type":"object"}"#.into(),
                    ..proto::Function::default()
                })),
            }],
            tool_choice: Some(proto::ToolChoice {
                tool_choice: Some(proto::tool_choice::ToolChoice::Mode(ToolMode::Auto as i32)),
            }),
            include: vec![1, 7],
            use_encrypted_content: true,
            ..GetCompletionsRequest::default()
        };
        let chat = chat_request(&request).unwrap();
        assert_eq!(
            chat,
            json!({"model": "grok", "messages": [{"role": "user", "content": "hi"}], "n": 1, "max_tokens": 5,
                "temperature": 0.7, "tools": [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
                "tool_choice": "auto"})
        );
    }

    #[test]
    fn what_is_not_offered_is_refused_with_its_place() {
        let mut message = user("x");
        message.role = 0;
        let request = GetCompletionsRequest {
            model: "grok".into(),
            messages: vec![user("hi"), message],
            ..GetCompletionsRequest::default()
        };
        assert_eq!(chat_request(&request).unwrap_err(), "messages[1]: role must be set");
        let request = GetCompletionsRequest {
            model: "grok".into(),
            messages: vec![user("hi")],
            tools: vec![proto::Tool {
                tool: Some(proto::tool::Tool::CodeExecution(proto::CodeExecution {})),
            }],
            ..GetCompletionsRequest::default()
        };
        assert!(
            chat_request(&request)
                .unwrap_err()
                .starts_with("tools[0]: this server-side tool is not offered")
        );
        let empty = GetCompletionsRequest {
            model: "grok".into(),
            ..GetCompletionsRequest::default()
        };
        assert_eq!(chat_request(&empty).unwrap_err(), "messages must not be empty");
    }

    #[test]
    fn usage_always_carries_its_cost_and_uncached_prompt() {
        let usage = usage(
            &TokenUsage {
                prompt_tokens: 10,
                cached_prompt_tokens: 4,
                completion_tokens: 3,
                web_search_calls: 2,
                ..TokenUsage::default()
            },
            Ticks::new(0),
        );
        assert_eq!(usage.cost_in_usd_ticks, Some(0));
        assert_eq!(
            (
                usage.prompt_text_tokens,
                usage.cached_prompt_text_tokens,
                usage.total_tokens
            ),
            (6, 4, 13)
        );
        assert_eq!(usage.server_side_tools_used, vec![1, 1]);
    }

    #[test]
    fn answers_and_chunks_are_the_assistants() {
        let answer = json!({"id": "c1", "created": 5, "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "t", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]}}]});
        let response = response(&answer, "grok", &TokenUsage::default(), Ticks::new(7), vec![]);
        let output = &response.outputs[0];
        assert_eq!(output.finish_reason, FinishReason::ReasonToolCalls as i32);
        let message = output.message.as_ref().unwrap();
        assert_eq!(message.role, MessageRole::RoleAssistant as i32);
        assert_eq!(message.tool_calls[0].id, "t");
        assert_eq!(response.usage.unwrap().cost_in_usd_ticks, Some(7));
        let chunk = chunk(
            &json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "he", "reasoning_content": "hm"}}]}),
            "grok",
        );
        let output = &chunk.outputs[0];
        let delta = output.delta.as_ref().unwrap();
        assert_eq!(delta.role, MessageRole::RoleAssistant as i32);
        assert_eq!((delta.content.as_str(), delta.reasoning_content.as_str()), ("he", "hm"));
        assert_eq!(output.finish_reason, FinishReason::ReasonInvalid as i32);
    }
}
