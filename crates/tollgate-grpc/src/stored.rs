//! Stored completions (`store_messages`, `previous_response_id`, `GetStoredCompletion`,
//! `DeleteStoredCompletion`) are the Responses API's stored responses: one store, two surfaces.
//! A completion stored here is kept as a Responses-API object with its conversation as chat
//! messages, exactly as REST keeps one, so `GET /v1/responses/{id}` reads it and a REST response
//! can be continued or read over gRPC.

use serde_json::{Value, json};
use tollgate_core::Saved;
use tollgate_domain::{Ticks, TokenUsage};
use tollgate_gateway::responses::{ResponseBuilder, ResponseHead, ResponsesRequest, usage_json};

use crate::proto::{
    CompletionMessage, CompletionOutput, FinishReason, GetChatCompletionResponse, MessageRole, ToolCall,
    ToolCallStatus, ToolCallType,
};

/// A completion to store once it is answered: its conversation so far, and its response being
/// built from the answer (whole, or chunk by chunk).
pub(crate) struct Keeper {
    conversation: Vec<Value>,
    builder: ResponseBuilder,
}

impl Keeper {
    /// The keeper of completion `id` (also the stored response's id), answered by `model` at
    /// `created_at` (Unix seconds), continuing `previous`, whose conversation is `conversation`
    /// (every message sent, the history first).
    pub(crate) fn new(
        id: &str,
        created_at: i64,
        model: &str,
        previous: Option<&str>,
        conversation: Vec<Value>,
    ) -> Result<Self, tonic::Status> {
        // What a Responses request would have echoed: the model, stored, what it continues.
        let echoed: ResponsesRequest = serde_json::from_value(json!({
            "model": model, "input": [], "store": true, "previous_response_id": previous,
        }))
        .map_err(|_| tonic::Status::internal("The completion could not be prepared for storing"))?;
        let suffix = id.replace('-', "");
        let head = ResponseHead::new(id.to_owned(), suffix, created_at, model.to_owned(), &echoed);
        Ok(Self {
            conversation,
            builder: ResponseBuilder::new(head),
        })
    }

    /// A whole answer (its first choice).
    pub(crate) fn answer(&mut self, answer: &Value) {
        self.builder.answer(answer);
    }

    /// A streamed chunk.
    pub(crate) fn chunk(&mut self, chunk: &Value) {
        let _ = self.builder.chunk(chunk);
    }

    /// The stored response and its conversation, with the assistant's turn.
    pub(crate) fn finish(mut self, usage: &TokenUsage, cost: Ticks, citations: Vec<String>) -> Saved {
        if !citations.is_empty() {
            self.builder.cite(citations);
        }
        let finished = self.builder.finish(usage_json(usage, cost));
        self.conversation.push(finished.assistant);
        Saved {
            response: finished.response,
            messages: self.conversation,
        }
    }
}

/// A stored response (a Responses-API object, stored over either surface) as the SDK's
/// completion: its text and reasoning, the client's function calls, the finish, and the usage
/// with its cost.
pub(crate) fn completion(response: &Value) -> GetChatCompletionResponse {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for item in response["output"].as_array().into_iter().flatten() {
        match item["type"].as_str() {
            Some("message") => {
                for part in item["content"].as_array().into_iter().flatten() {
                    if let Some(text) = part["text"].as_str() {
                        content.push_str(text);
                    }
                }
            }
            Some("reasoning") => {
                for part in item["summary"].as_array().into_iter().flatten() {
                    if let Some(text) = part["text"].as_str() {
                        reasoning.push_str(text);
                    }
                }
            }
            Some("function_call") => calls.push(ToolCall {
                id: item["call_id"].as_str().unwrap_or_default().to_owned(),
                r#type: ToolCallType::ClientSideTool as i32,
                status: ToolCallStatus::Completed as i32,
                error_message: None,
                tool: Some(crate::proto::tool_call::Tool::Function(crate::proto::FunctionCall {
                    name: item["name"].as_str().unwrap_or_default().to_owned(),
                    arguments: item["arguments"].as_str().unwrap_or_default().to_owned(),
                })),
            }),
            _ => {}
        }
    }
    let finish_reason = if response["status"] == "incomplete" {
        FinishReason::ReasonMaxLen
    } else if calls.is_empty() {
        FinishReason::ReasonStop
    } else {
        FinishReason::ReasonToolCalls
    };
    let stored = &response["usage"];
    let count = |value: &Value| value.as_u64().unwrap_or_default();
    let reasoning_tokens = count(&stored["output_tokens_details"]["reasoning_tokens"]);
    let usage = TokenUsage {
        prompt_tokens: count(&stored["input_tokens"]),
        cached_prompt_tokens: count(&stored["input_tokens_details"]["cached_tokens"]),
        completion_tokens: count(&stored["output_tokens"]).saturating_sub(reasoning_tokens),
        reasoning_tokens,
        web_search_calls: count(&stored["server_side_tool_usage_details"]["web_search_calls"]),
        x_search_calls: count(&stored["server_side_tool_usage_details"]["x_search_calls"]),
        ..TokenUsage::default()
    };
    let cost = Ticks::new(stored["cost_in_usd_ticks"].as_i64().unwrap_or_default());
    GetChatCompletionResponse {
        id: response["id"].as_str().unwrap_or_default().to_owned(),
        outputs: vec![CompletionOutput {
            finish_reason: finish_reason as i32,
            index: 0,
            message: Some(CompletionMessage {
                content,
                reasoning_content: reasoning,
                role: MessageRole::RoleAssistant as i32,
                tool_calls: calls,
                ..CompletionMessage::default()
            }),
            logprobs: None,
        }],
        created: response["created_at"]
            .as_i64()
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        model: response["model"].as_str().unwrap_or_default().to_owned(),
        usage: Some(crate::convert::usage(&usage, cost)),
        citations: response["citations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|url| url.as_str().map(str::to_owned))
            .collect(),
        ..GetChatCompletionResponse::default()
    }
}
