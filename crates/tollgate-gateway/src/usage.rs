//! Usage in, usage out. Upstreams report usage in OpenAI's accounting (reasoning tokens inside
//! `completion_tokens`) or in xAI's (reasoning separate); we normalise to xAI's, which is also
//! what we report to clients, with the exact cost in `cost_in_usd_ticks`.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_domain::{Ticks, TokenUsage};

#[derive(Debug, Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

/// Reads a `usage` object; `None` when absent, null or not a usage object.
#[must_use]
pub fn parse_usage(value: &Value) -> Option<TokenUsage> {
    if value.is_null() {
        return None;
    }
    Some(normalise(RawUsage::deserialize(value).ok()?))
}

/// Reads a `usage` object from its JSON text, as [`parse_usage`] does.
#[must_use]
pub fn parse_usage_text(json: &str) -> Option<TokenUsage> {
    serde_json::from_str::<Option<RawUsage>>(json)
        .ok()
        .flatten()
        .map(normalise)
}

fn normalise(raw: RawUsage) -> TokenUsage {
    let reasoning = raw
        .completion_tokens_details
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(0);
    let cached = raw
        .prompt_tokens_details
        .and_then(|d| d.cached_tokens)
        .unwrap_or(0)
        .min(raw.prompt_tokens);
    // OpenAI counts reasoning inside completion_tokens, so its total is prompt + completion;
    // xAI counts it apart and its total is prompt + completion + reasoning.
    let openai_style = raw.total_tokens == Some(raw.prompt_tokens.saturating_add(raw.completion_tokens))
        && reasoning > 0
        && reasoning <= raw.completion_tokens;
    let completion = if openai_style {
        raw.completion_tokens - reasoning
    } else {
        raw.completion_tokens
    };
    TokenUsage {
        prompt_tokens: raw.prompt_tokens,
        cached_prompt_tokens: cached,
        completion_tokens: completion,
        reasoning_tokens: reasoning,
        ..TokenUsage::default()
    }
}

/// The `usage` object we send to clients, in xAI's shape.
#[derive(Serialize)]
struct UsageView {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: PromptDetailsView,
    completion_tokens_details: CompletionDetailsView,
    num_sources_used: u64,
    cost_in_usd_ticks: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    num_server_side_tools_used: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_side_tool_usage_details: Option<ToolDetails>,
}

#[derive(Serialize)]
struct PromptDetailsView {
    text_tokens: u64,
    audio_tokens: u64,
    image_tokens: u64,
    cached_tokens: u64,
}

#[derive(Serialize)]
struct CompletionDetailsView {
    reasoning_tokens: u64,
    audio_tokens: u64,
    accepted_prediction_tokens: u64,
    rejected_prediction_tokens: u64,
}

/// xAI's `server_side_tool_usage_details`.
#[derive(Serialize)]
struct ToolDetails {
    web_search_calls: u64,
    x_search_calls: u64,
    code_interpreter_calls: u64,
    file_search_calls: u64,
    mcp_calls: u64,
    document_search_calls: u64,
    image_generation_calls: u64,
}

impl ToolDetails {
    fn of(usage: &TokenUsage) -> Self {
        Self {
            web_search_calls: usage.web_search_calls,
            x_search_calls: usage.x_search_calls,
            code_interpreter_calls: 0,
            file_search_calls: 0,
            mcp_calls: 0,
            document_search_calls: 0,
            image_generation_calls: 0,
        }
    }
}

impl UsageView {
    /// The text `serde_json::to_string(self)` writes, keys and all, from keys escaped already
    /// (serde_json escapes each key as it writes it: most of what this object cost to write).
    fn write_json(&self, out: &mut String) {
        fn field(out: &mut String, key: &str, value: impl itoa::Integer) {
            out.push_str(key);
            out.push_str(itoa::Buffer::new().format(value));
        }
        let (prompt, completion) = (&self.prompt_tokens_details, &self.completion_tokens_details);
        field(out, r#"{"prompt_tokens":"#, self.prompt_tokens);
        field(out, r#","completion_tokens":"#, self.completion_tokens);
        field(out, r#","total_tokens":"#, self.total_tokens);
        field(out, r#","prompt_tokens_details":{"text_tokens":"#, prompt.text_tokens);
        field(out, r#","audio_tokens":"#, prompt.audio_tokens);
        field(out, r#","image_tokens":"#, prompt.image_tokens);
        field(out, r#","cached_tokens":"#, prompt.cached_tokens);
        field(
            out,
            r#"},"completion_tokens_details":{"reasoning_tokens":"#,
            completion.reasoning_tokens,
        );
        field(out, r#","audio_tokens":"#, completion.audio_tokens);
        field(
            out,
            r#","accepted_prediction_tokens":"#,
            completion.accepted_prediction_tokens,
        );
        field(
            out,
            r#","rejected_prediction_tokens":"#,
            completion.rejected_prediction_tokens,
        );
        field(out, r#"},"num_sources_used":"#, self.num_sources_used);
        field(out, r#","cost_in_usd_ticks":"#, self.cost_in_usd_ticks);
        if let Some(used) = self.num_server_side_tools_used {
            field(out, r#","num_server_side_tools_used":"#, used);
        }
        if let Some(tools) = &self.server_side_tool_usage_details {
            field(
                out,
                r#","server_side_tool_usage_details":{"web_search_calls":"#,
                tools.web_search_calls,
            );
            field(out, r#","x_search_calls":"#, tools.x_search_calls);
            field(out, r#","code_interpreter_calls":"#, tools.code_interpreter_calls);
            field(out, r#","file_search_calls":"#, tools.file_search_calls);
            field(out, r#","mcp_calls":"#, tools.mcp_calls);
            field(out, r#","document_search_calls":"#, tools.document_search_calls);
            field(out, r#","image_generation_calls":"#, tools.image_generation_calls);
            out.push('}');
        }
        out.push('}');
    }

    fn of(usage: &TokenUsage, cost: Ticks) -> Self {
        let tools = usage.server_side_tool_calls();
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.total_tokens(),
            prompt_tokens_details: PromptDetailsView {
                text_tokens: usage.prompt_tokens,
                audio_tokens: 0,
                image_tokens: 0,
                cached_tokens: usage.cached_prompt_tokens,
            },
            completion_tokens_details: CompletionDetailsView {
                reasoning_tokens: usage.reasoning_tokens,
                audio_tokens: 0,
                accepted_prediction_tokens: 0,
                rejected_prediction_tokens: 0,
            },
            num_sources_used: 0,
            cost_in_usd_ticks: cost.get(),
            num_server_side_tools_used: (tools > 0).then_some(tools),
            server_side_tool_usage_details: (tools > 0).then(|| ToolDetails::of(usage)),
        }
    }
}

/// The `usage` object we send to clients, in xAI's shape.
#[must_use]
pub fn usage_json(usage: &TokenUsage, cost: Ticks) -> Value {
    serde_json::to_value(UsageView::of(usage, cost)).unwrap_or(Value::Null)
}

/// [`usage_json`] as JSON text, written straight from the counts (no tree built), to splice
/// into an answer or a stream's chunk.
#[must_use]
pub fn usage_json_text(usage: &TokenUsage, cost: Ticks) -> String {
    let mut out = String::with_capacity(512);
    UsageView::of(usage, cost).write_json(&mut out);
    out
}

/// xAI's `server_side_tool_usage_details`: the calls of each server-side tool charged.
#[must_use]
pub fn server_side_tool_usage_details(usage: &TokenUsage) -> Value {
    serde_json::to_value(ToolDetails::of(usage)).unwrap_or(Value::Null)
}

/// A prompt token count for when the upstream reports none: the texts' tokens by the model's
/// tokenizer (else about four characters a token), plus the chat template's overhead. Records
/// using it are marked estimated.
#[must_use]
pub fn estimate_prompt_tokens(
    request: &crate::wire::ChatCompletionRequest,
    tokenizer: Option<&crate::tokenizer::Tokenizer>,
    template: TemplateOverhead,
) -> u64 {
    use crate::wire::MessageContent;
    let mut tokens = template.per_request;
    for message in &request.messages {
        tokens = tokens.saturating_add(template.per_message);
        let texts: Vec<&str> = match &message.content {
            Some(MessageContent::Text(text)) => vec![text.as_str()],
            Some(MessageContent::Parts(parts)) => parts
                .iter()
                .filter_map(|part| part.get("text").and_then(Value::as_str))
                .collect(),
            None => Vec::new(),
        };
        for text in texts {
            tokens = tokens.saturating_add(count_tokens(text, tokenizer));
        }
    }
    tokens
}

/// `text`'s tokens by `tokenizer`, else about four characters a token.
#[must_use]
pub fn count_tokens(text: &str, tokenizer: Option<&crate::tokenizer::Tokenizer>) -> u64 {
    match tokenizer {
        Some(tokenizer) => tokenizer.tokenize(text).len() as u64,
        None => (text.chars().count() as u64).div_ceil(4),
    }
}

/// The tokens a model's chat template adds around a conversation: per message (role markers,
/// separators) and per request (a preamble, the assistant's opening). Upstream-reported usage
/// already includes them; they are added to credit holds and to estimates only, which is why
/// `/v1/tokenize-text` counts fewer tokens than a request is billed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateOverhead {
    /// Tokens per message.
    pub per_message: u64,
    /// Tokens per request.
    pub per_request: u64,
}

impl Default for TemplateOverhead {
    /// Above what common templates add (Llama 3: 4–5 per message; ChatML: 4–5), so a hold
    /// without configuration stays an upper bound.
    fn default() -> Self {
        Self {
            per_message: 16,
            per_request: 64,
        }
    }
}

/// Tokens an image input may cost at most (448×448 tiles of 256 tokens, at most 6 plus one).
pub const MAX_IMAGE_TOKENS: u64 = 1_792;
/// An upper bound of the request's prompt tokens before its chat template, safe without a
/// tokenizer: a token is at least one byte of the text it encodes, so every message's text, tool
/// call and tool schema counts its bytes; each image counts [`MAX_IMAGE_TOKENS`]. The model's
/// [`TemplateOverhead`] is added by [`Demand::prompt_bound`]. What a credit hold is computed from.
#[must_use]
pub fn prompt_upper_bound(request: &crate::wire::ChatCompletionRequest) -> u64 {
    prompt_tokens_by(request, &|text| text.len() as u64)
}

/// Most bytes of prompt [`prompt_tokens_counted`] tokenizes: past it, counting would cost more
/// CPU than a tighter hold is worth.
pub const MAX_COUNTED_PROMPT_BYTES: u64 = 256 * 1024;

/// The request's prompt tokens before its chat template, counted by `tokenizer`: every text,
/// tool call and tool schema tokenized, each image at [`MAX_IMAGE_TOKENS`]. Tighter than
/// [`prompt_upper_bound`] (a token is usually several bytes); `None` for a prompt above
/// [`MAX_COUNTED_PROMPT_BYTES`].
#[must_use]
pub fn prompt_tokens_counted(
    request: &crate::wire::ChatCompletionRequest,
    tokenizer: &crate::tokenizer::Tokenizer,
) -> Option<u64> {
    if prompt_upper_bound(request) > MAX_COUNTED_PROMPT_BYTES {
        return None;
    }
    Some(prompt_tokens_by(request, &|text| tokenizer.tokenize(text).len() as u64))
}

fn prompt_tokens_by(request: &crate::wire::ChatCompletionRequest, count: &dyn Fn(&str) -> u64) -> u64 {
    use crate::wire::MessageContent;
    let value_tokens = |value: &Value| match value {
        Value::Null => 0,
        Value::String(text) => count(text),
        other => count(&other.to_string()),
    };
    let mut tokens: u64 = 0;
    for message in &request.messages {
        match &message.content {
            Some(MessageContent::Text(text)) => tokens = tokens.saturating_add(count(text)),
            Some(MessageContent::Parts(parts)) => {
                for part in parts {
                    let image = part.get("type").and_then(Value::as_str) == Some("image_url");
                    let size = if image {
                        MAX_IMAGE_TOKENS
                    } else {
                        serde_json::to_string(part).map_or(0, |text| count(&text))
                    };
                    tokens = tokens.saturating_add(size);
                }
            }
            None => {}
        }
        for value in message.extra.values() {
            // Tool calls, names, reasoning carried back: all of it is prompt.
            tokens = tokens.saturating_add(value_tokens(value));
        }
    }
    for (field, value) in &request.extra {
        if matches!(
            field.as_str(),
            "tools" | "functions" | "tool_choice" | "response_format"
        ) {
            tokens = tokens.saturating_add(value_tokens(value));
        }
    }
    tokens
}

/// What a request may cost at most, in tokens, before the model's limits apply: what a credit
/// hold is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// An upper bound of its prompt tokens before any chat template ([`prompt_upper_bound`]).
    pub prompt_tokens: u64,
    /// Its chat messages, each wrapped by the model's chat template (none outside chat).
    pub messages: u64,
    /// The output tokens it asks for at most per choice (`max_completion_tokens` or
    /// `max_tokens`), if it names any.
    pub output_tokens: Option<u64>,
    /// How many choices it asks for (`n`, at least 1).
    pub choices: u64,
    /// How many images it asks to generate.
    pub images: u64,
    /// Server-side tools: how many model calls it may make and what each search round may add.
    pub tools: ToolDemand,
}

/// What a request's server-side tool loop may use at most (nothing without server-side tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToolDemand {
    /// Model calls that may ask for searches (the loop then makes one more that answers).
    pub search_rounds: u64,
    /// Prompt tokens one round's search results may add (every call's results at their cap).
    pub results_per_round: u64,
    /// Messages one round adds (the model's turn and a result per call).
    pub messages_per_round: u64,
    /// Web searches at most (each a fee).
    pub web_searches: u64,
    /// X searches at most (each a fee).
    pub x_searches: u64,
}

impl Demand {
    /// An embeddings request's demand: its input (text, texts, or token arrays) bounded like a
    /// prompt, every byte a token (an array of token ids counts one per id), and no output.
    #[must_use]
    pub fn of_embeddings(input: &Value) -> Self {
        fn bound(value: &Value) -> u64 {
            match value {
                Value::String(text) => text.len() as u64 + 1,
                Value::Number(_) => 1,
                Value::Array(items) => items.iter().map(bound).fold(0, u64::saturating_add),
                _ => 0,
            }
        }
        Self {
            prompt_tokens: bound(input),
            messages: 0,
            output_tokens: Some(0),
            choices: 1,
            images: 0,
            tools: ToolDemand::default(),
        }
    }

    /// An image generation's demand: its prompt bounded like an embedding input, and `n`
    /// images.
    #[must_use]
    pub fn of_images(prompt: &str, images: u64) -> Self {
        Self {
            images,
            ..Self::of_embeddings(&Value::String(prompt.to_owned()))
        }
    }

    /// A legacy completion's demand: each prompt bounded like a chat prompt (a text's bytes, a
    /// token list's ids), every prompt's generated choices (`best_of`, else `n`) at the request's
    /// `max_tokens` (OpenAI's default of 16 when it names none).
    #[must_use]
    pub fn of_completion(request: &crate::wire::CompletionRequest) -> Self {
        let mut bound = Self::of_embeddings(&request.prompt);
        bound.output_tokens = Some(u64::from(
            request
                .max_tokens
                .unwrap_or(crate::wire::CompletionRequest::DEFAULT_MAX_TOKENS),
        ));
        bound.choices = request.prompts().saturating_mul(request.choices_per_prompt());
        bound
    }

    /// A chat completion's demand.
    #[must_use]
    pub fn of_chat(request: &crate::wire::ChatCompletionRequest) -> Self {
        Self {
            prompt_tokens: prompt_upper_bound(request),
            messages: request.messages.len() as u64,
            output_tokens: request.max_completion_tokens.or(request.max_tokens).map(u64::from),
            choices: request.extra.get("n").and_then(Value::as_u64).unwrap_or(1).max(1),
            images: 0,
            tools: ToolDemand::default(),
        }
    }

    /// The worst case a credit hold covers, as usage: every model call's prompt at its bound
    /// (each search round's call sends the previous one's prompt, its output and its results
    /// again), the whole output budget of every call, every image and every search made.
    #[must_use]
    pub fn worst_case(&self, model_max: u64, template: TemplateOverhead) -> TokenUsage {
        let calls = self.tools.search_rounds.saturating_add(1);
        let first = self.prompt_bound(template);
        let growth = self
            .output_per_choice(model_max)
            .saturating_add(self.tools.results_per_round)
            .saturating_add(self.tools.messages_per_round.saturating_mul(template.per_message));
        // The k-th call (from 0) sends the first prompt and k rounds' growth: summed over the calls.
        let rounds_sum = calls.saturating_mul(calls.saturating_sub(1)) / 2;
        TokenUsage {
            prompt_tokens: calls
                .saturating_mul(first)
                .saturating_add(growth.saturating_mul(rounds_sum)),
            completion_tokens: calls.saturating_mul(self.output_budget(model_max)),
            images: self.images,
            web_search_calls: self.tools.web_searches,
            x_search_calls: self.tools.x_searches,
            ..TokenUsage::default()
        }
    }

    /// The prompt's upper bound with the model's chat template around its messages.
    #[must_use]
    pub fn prompt_bound(&self, template: TemplateOverhead) -> u64 {
        if self.messages == 0 {
            return self.prompt_tokens;
        }
        self.prompt_tokens
            .saturating_add(template.per_request)
            .saturating_add(self.messages.saturating_mul(template.per_message))
    }

    /// The output tokens per choice the upstream is held to: what the request asks for
    /// (else the model's maximum), never above the model's maximum.
    #[must_use]
    pub fn output_per_choice(&self, model_max: u64) -> u64 {
        self.output_tokens.map_or(model_max, |asked| asked.min(model_max))
    }

    /// The output tokens the request may be charged for: [`Self::output_per_choice`] times
    /// its choices.
    #[must_use]
    pub fn output_budget(&self, model_max: u64) -> u64 {
        self.output_per_choice(model_max).saturating_mul(self.choices)
    }
}

/// A completion token count of a non-streaming answer, for when the upstream reports none:
/// every generated text of every choice ([`generated_text`]), by the model's tokenizer, else
/// about four characters a token.
#[must_use]
pub fn estimate_completion_tokens(answer: &Value, tokenizer: Option<&crate::tokenizer::Tokenizer>) -> u64 {
    answer["choices"]
        .as_array()
        .map(|choices| {
            choices
                .iter()
                .map(|choice| {
                    generated_text(&choice["message"])
                        .iter()
                        .map(|text| count_tokens(text, tokenizer))
                        .fold(0, u64::saturating_add)
                })
                .fold(0, u64::saturating_add)
        })
        .unwrap_or(0)
}

/// The texts a model generated in one message: its content, refusal and reasoning, and the
/// names and arguments of the tools it called.
#[must_use]
pub fn generated_text(message: &Value) -> Vec<&str> {
    let mut texts: Vec<&str> = ["content", "refusal", "reasoning_content", "reasoning"]
        .iter()
        .filter_map(|field| message[*field].as_str())
        .collect();
    let calls = message["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|call| &call["function"]);
    for function in calls.chain(std::iter::once(&message["function_call"])) {
        texts.extend(
            ["name", "arguments"]
                .iter()
                .filter_map(|field| function[*field].as_str()),
        );
    }
    texts
}

/// A rough completion token count of a legacy completion's answer (every choice's `text`).
#[must_use]
pub fn estimate_text_completion_tokens(answer: &Value) -> u64 {
    let chars: u64 = answer["choices"]
        .as_array()
        .map(|choices| {
            choices
                .iter()
                .map(|choice| choice["text"].as_str().map_or(0, |text| text.chars().count() as u64))
                .sum()
        })
        .unwrap_or(0);
    chars.div_ceil(4)
}

/// The characters a model generated in one message (an answer's `message`, or a stream chunk's
/// `delta`): its content, refusal and reasoning, and the names and arguments of the tools it
/// called (`tool_calls`, or the legacy `function_call`). All of it is output the model was paid
/// to produce, so none of it may be left out of an estimate.
#[must_use]
pub fn generated_chars(message: &Value) -> u64 {
    generated_text(message)
        .iter()
        .map(|text| text.chars().count() as u64)
        .fold(0, u64::saturating_add)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_usage_text_is_the_usage_object() {
        let usage = TokenUsage {
            prompt_tokens: 12,
            cached_prompt_tokens: 2,
            completion_tokens: 30,
            reasoning_tokens: 5,
            web_search_calls: 1,
            ..TokenUsage::default()
        };
        let text: Value = serde_json::from_str(&usage_json_text(&usage, Ticks::new(77))).expect("JSON");
        assert_eq!(text, usage_json(&usage, Ticks::new(77)));
        assert_eq!(text["total_tokens"], 47);
        assert_eq!(text["prompt_tokens_details"]["cached_tokens"], 2);
        assert_eq!(text["cost_in_usd_ticks"], 77);
        assert_eq!(text["num_server_side_tools_used"], 1);
        assert_eq!(text["server_side_tool_usage_details"]["web_search_calls"], 1);
        let plain = usage_json(&TokenUsage::default(), Ticks::ZERO);
        assert!(plain.get("num_server_side_tools_used").is_none());
        assert!(plain.get("server_side_tool_usage_details").is_none());
    }

    #[test]
    fn the_usage_text_is_what_serde_json_writes_byte_for_byte() {
        let counts = [0, 1, 9, 10, 12_345, u64::MAX];
        for (i, &count) in counts.iter().enumerate() {
            let other = counts[(i + 1) % counts.len()];
            for tools in [0, 1, u64::MAX] {
                let usage = TokenUsage {
                    prompt_tokens: count,
                    cached_prompt_tokens: other,
                    completion_tokens: other,
                    reasoning_tokens: count,
                    images: count,
                    web_search_calls: tools,
                    x_search_calls: tools / 2,
                };
                for cost in [0, 1, -1, i64::MAX, i64::MIN] {
                    let view = UsageView::of(&usage, Ticks::new(cost));
                    assert_eq!(
                        usage_json_text(&usage, Ticks::new(cost)),
                        serde_json::to_string(&view).unwrap()
                    );
                }
            }
        }
    }

    #[test]
    fn reads_openai_accounting() {
        let usage = parse_usage(
            &json!({"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
            "completion_tokens_details": {"reasoning_tokens": 12}, "prompt_tokens_details": {"cached_tokens": 4}}),
        )
        .unwrap();
        assert_eq!(
            usage,
            TokenUsage {
                prompt_tokens: 10,
                cached_prompt_tokens: 4,
                completion_tokens: 18,
                reasoning_tokens: 12,
                ..TokenUsage::default()
            }
        );
        assert_eq!(usage.total_tokens(), 40);
    }

    #[test]
    fn reads_xai_accounting() {
        let usage = parse_usage(
            &json!({"prompt_tokens": 37, "completion_tokens": 530, "total_tokens": 800,
            "completion_tokens_details": {"reasoning_tokens": 233}}),
        )
        .unwrap();
        assert_eq!(usage.completion_tokens, 530);
        assert_eq!(usage.total_tokens(), 800);
    }

    #[test]
    fn every_generated_text_is_counted() {
        let message = json!({
            "content": "abcd",
            "reasoning_content": "efgh",
            "tool_calls": [
                {"function": {"name": "lookup", "arguments": "{\"q\":1}"}},
                {"function": {"name": "x", "arguments": ""}},
            ],
            "function_call": {"name": "ab", "arguments": "cd"},
        });
        assert_eq!(generated_chars(&message), 4 + 4 + 6 + 7 + 1 + 2 + 2);
        let answer = json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"function": {"name": "lookup", "arguments": "x".repeat(40_000)}}]}}]});
        assert_eq!(estimate_completion_tokens(&answer, None), 10_000 + 6_u64.div_ceil(4));
        let cl100k = crate::tokenizer::Tokenizer::named("cl100k_base");
        let answer = json!({"choices": [{"message": {"content": "Hello world"}}]});
        assert_eq!(
            estimate_completion_tokens(&answer, cl100k.as_ref()),
            2,
            "by the model's tokenizer"
        );
        assert_eq!(generated_chars(&json!({})), 0);
    }

    #[test]
    fn prompt_bounds_cover_every_byte_and_image() {
        let request: crate::wire::ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]},
            ],
            "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        }))
        .unwrap();
        let demand = Demand::of_chat(&request);
        let bound = demand.prompt_bound(TemplateOverhead::default());
        let text_part = json!({"type": "text", "text": "What is this?"}).to_string().len() as u64;
        let tool_calls = request.messages[2].extra["tool_calls"].to_string().len() as u64;
        let tools = request.extra["tools"].to_string().len() as u64;
        assert_eq!(
            bound,
            64 + 3 * 16 + "Be brief.".len() as u64 + text_part + MAX_IMAGE_TOKENS + tool_calls + tools
        );
        assert!(bound >= estimate_prompt_tokens(&request, None, TemplateOverhead::default()));
        let tight = TemplateOverhead {
            per_message: 5,
            per_request: 3,
        };
        assert_eq!(demand.prompt_bound(tight), bound - (64 + 3 * 16) + 3 + 3 * 5);
        // Outside chat there is no template.
        assert_eq!(Demand::of_embeddings(&json!("abc")).prompt_bound(tight), 4);
    }

    #[test]
    fn output_budgets_are_clamped_and_multiplied() {
        let request = |extra: Value| -> crate::wire::ChatCompletionRequest {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            serde_json::from_value(body).unwrap()
        };
        assert_eq!(Demand::of_chat(&request(json!({}))).output_budget(16_384), 16_384);
        assert_eq!(
            Demand::of_chat(&request(json!({"max_tokens": 100}))).output_budget(16_384),
            100
        );
        assert_eq!(
            Demand::of_chat(&request(json!({"max_completion_tokens": 50, "max_tokens": 100}))).output_budget(16_384),
            50
        );
        assert_eq!(
            Demand::of_chat(&request(json!({"max_tokens": 1_000_000}))).output_budget(16_384),
            16_384
        );
        assert_eq!(
            Demand::of_chat(&request(json!({"max_tokens": 100, "n": 3}))).output_budget(16_384),
            300
        );
    }

    #[test]
    fn absent_usage_is_none() {
        assert!(parse_usage(&Value::Null).is_none());
        assert!(parse_usage(&json!("nope")).is_none());
    }
}
