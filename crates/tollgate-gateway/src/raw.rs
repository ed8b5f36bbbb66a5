//! Reading an upstream's JSON without building a tree of it. A stream chunk is relayed almost
//! as it came: only its `model` (our public name) and its `usage` (with the cost) change, and
//! billing reads only the usage and the generated text. [`RawObject`] keeps an object's members
//! as the upstream's own text, so a chunk is scanned once, the few fields needed are read from
//! it, and it is written back by splicing, with no `Value` built and no number re-printed.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A JSON object's members in the upstream's order, each value its raw JSON text. A key that
/// appears twice keeps its first place and its last value, as a parser building a map would.
#[derive(Debug)]
pub struct RawObject<'a> {
    members: Vec<(&'a str, &'a RawValue)>,
}

impl<'a> RawObject<'a> {
    /// `json` as an object; `None` when it is not one (or a key needs unescaping, which no
    /// upstream's keys do: the caller then takes the slow, general path).
    #[must_use]
    pub fn parse(json: &'a str) -> Option<Self> {
        serde_json::from_str(json).ok()
    }

    /// The raw value of member `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.members
            .iter()
            .find_map(|(name, value)| (*name == key).then_some(*value))
    }

    /// Whether the object has member `key`.
    #[must_use]
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Member `key` when it is an object.
    #[must_use]
    pub fn object(&self, key: &str) -> Option<RawObject<'a>> {
        self.get(key).and_then(|raw| Self::parse(raw.get()))
    }

    /// The items of member `key` when it is an array (none otherwise).
    #[must_use]
    pub fn array(&self, key: &str) -> Vec<&'a RawValue> {
        self.get(key)
            .filter(|raw| raw.get().starts_with('['))
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default()
    }

    /// Member `key` when it is a string, unescaped.
    #[must_use]
    pub fn text(&self, key: &str) -> Option<Cow<'a, str>> {
        let json = self.get(key)?.get();
        if !json.starts_with('"') {
            return None;
        }
        // Borrowed when it has no escapes, which is nearly always.
        match serde_json::from_str::<&'a str>(json) {
            Ok(text) => Some(Cow::Borrowed(text)),
            Err(_) => serde_json::from_str::<String>(json).ok().map(Cow::Owned),
        }
    }

    /// About how long the object's text is.
    #[must_use]
    pub fn len_hint(&self) -> usize {
        self.members
            .iter()
            .map(|(key, value)| key.len() + value.get().len() + 4)
            .sum::<usize>()
            + 2
    }

    /// The object written back with each member named in `replace` given that JSON text
    /// instead (members not present are not added), in the upstream's order.
    #[must_use]
    pub fn spliced(&self, replace: &[(&str, &str)]) -> String {
        let mut out =
            String::with_capacity(self.len_hint() + replace.iter().map(|(_, json)| json.len()).sum::<usize>());
        self.splice_into(&mut out, replace);
        out
    }

    /// [`Self::spliced`], with each member of `set` that the object lacks added at its end
    /// (`set`'s names are written as they are: plain names, no escapes).
    #[must_use]
    pub fn spliced_adding(&self, set: &[(&str, &str)]) -> String {
        let mut out = self.spliced(set);
        for (name, json) in set {
            if !self.has(name) {
                out.pop();
                if out.len() > 1 {
                    out.push(',');
                }
                out.push('"');
                out.push_str(name);
                out.push_str("\":");
                out.push_str(json);
                out.push('}');
            }
        }
        out
    }

    /// [`Self::spliced`], written at the end of `out`.
    pub fn splice_into(&self, out: &mut String, replace: &[(&str, &str)]) {
        out.push('{');
        for (n, (key, value)) in self.members.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            // A borrowed key had no escapes, so it is written back as it was read.
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            let json = replace
                .iter()
                .find_map(|(name, json)| (*name == *key).then_some(*json))
                .unwrap_or_else(|| value.get());
            out.push_str(json);
        }
        out.push('}');
    }
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;

        impl<'de> Visitor<'de> for Members {
            type Value = RawObject<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members: Vec<(&'de str, &'de RawValue)> = Vec::with_capacity(8);
                while let Some(key) = map.next_key::<&'de str>()? {
                    let value = map.next_value::<&'de RawValue>()?;
                    match members.iter_mut().find(|(name, _)| *name == key) {
                        Some(member) => member.1 = value,
                        None => members.push((key, value)),
                    }
                }
                Ok(RawObject { members })
            }
        }

        deserializer.deserialize_map(Members)
    }
}

/// Whether JSON `text` nests arrays and objects no deeper than `limit` (brackets inside
/// strings do not count). A tree reader refuses deep nesting (serde_json's at 128 levels);
/// what passes here with a limit below that, it reads.
#[must_use]
pub fn nesting_within(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'"' => {
                // To the string's end: its text is most of an answer, so jump from escape to
                // escape (an escape's next byte is never the end).
                loop {
                    let Some(rest) = bytes.get(at..) else { return true };
                    match memchr::memchr2(b'"', b'\\', rest) {
                        Some(found) if rest[found] == b'\\' => at += found + 2,
                        Some(found) => {
                            at += found + 1;
                            break;
                        }
                        // Unterminated: not JSON, which its reader will say.
                        None => return true,
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// The characters a model generated in one message or stream delta, read from its raw text: as
/// [`crate::usage::generated_chars`] counts them (content, refusal, reasoning, and the names and
/// arguments of the tools it called).
#[must_use]
pub fn generated_chars(message: &RawObject<'_>) -> u64 {
    let count = |text: Option<Cow<'_, str>>| text.map_or(0, |text| text.chars().count() as u64);
    let mut chars = ["content", "refusal", "reasoning_content", "reasoning"]
        .iter()
        .map(|field| count(message.text(field)))
        .fold(0, u64::saturating_add);
    let calls = message
        .array("tool_calls")
        .into_iter()
        .filter_map(|call| RawObject::parse(call.get()).and_then(|call| call.object("function")));
    for function in calls.chain(message.object("function_call")) {
        chars = chars
            .saturating_add(count(function.text("name")))
            .saturating_add(count(function.text("arguments")));
    }
    chars
}

/// The characters generated in a stream chunk: every choice's delta, and a text completion's
/// `text`. The chunk's `choices` are read in one pass into borrowed views; one of unusual shape
/// (a repeated key, say) is read member by member instead, with the same result.
#[must_use]
pub fn chunk_generated_chars(chunk: &RawObject<'_>) -> u64 {
    let Some(choices) = chunk.get("choices") else {
        return 0;
    };
    if let Ok(views) = serde_json::from_str::<Vec<ChoiceView<'_>>>(choices.get()) {
        return views.iter().map(ChoiceView::chars).fold(0, u64::saturating_add);
    }
    chunk
        .array("choices")
        .into_iter()
        .filter_map(|choice| RawObject::parse(choice.get()))
        .map(|choice| {
            let delta = choice.object("delta").map_or(0, |delta| generated_chars(&delta));
            let text = choice.text("text").map_or(0, |text| text.chars().count() as u64);
            delta.saturating_add(text)
        })
        .fold(0, u64::saturating_add)
}

/// A member that counts only when it is a string (anything else, as the tree walk does, counts
/// nothing, and is skipped without being built).
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn chars(&self) -> u64 {
        self.0.as_ref().map_or(0, |text| text.chars().count() as u64)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Lenient<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for Lenient<'a> {
            type Value = Text<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("any JSON value")
            }

            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Borrowed(text))))
            }

            fn visit_str<E>(self, text: &str) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(text.to_owned()))))
            }

            fn visit_string<E>(self, text: String) -> Result<Self::Value, E> {
                Ok(Text(Some(Cow::Owned(text))))
            }

            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Text(None))
            }

            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }

            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Text(None))
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Text(None))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Text(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Text(None))
            }
        }

        deserializer.deserialize_any(Lenient(std::marker::PhantomData))
    }
}

/// A stream choice, as far as generated text goes.
#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<MessageView<'a>>,
    #[serde(borrow, default)]
    text: Text<'a>,
}

impl ChoiceView<'_> {
    fn chars(&self) -> u64 {
        self.delta
            .as_ref()
            .map_or(0, MessageView::chars)
            .saturating_add(self.text.chars())
    }
}

/// A delta's generated parts, as [`generated_chars`] reads them.
#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(borrow, default)]
    content: Text<'a>,
    #[serde(borrow, default)]
    refusal: Text<'a>,
    #[serde(borrow, default)]
    reasoning_content: Text<'a>,
    #[serde(borrow, default)]
    reasoning: Text<'a>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<CallView<'a>>>,
    #[serde(borrow, default)]
    function_call: Option<FunctionView<'a>>,
}

impl MessageView<'_> {
    fn chars(&self) -> u64 {
        let calls = self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|call| call.function.as_ref());
        [&self.content, &self.refusal, &self.reasoning_content, &self.reasoning]
            .iter()
            .map(|text| text.chars())
            .chain(calls.chain(self.function_call.as_ref()).map(FunctionView::chars))
            .fold(0, u64::saturating_add)
    }
}

#[derive(Deserialize)]
struct CallView<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionView<'a>>,
}

#[derive(Deserialize)]
struct FunctionView<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    arguments: Text<'a>,
}

impl FunctionView<'_> {
    fn chars(&self) -> u64 {
        self.name.chars().saturating_add(self.arguments.chars())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(nesting_within("{}", 1));
        assert!(!nesting_within("[[]]", 1));
        assert!(nesting_within(r#"{"a":[1,{"b":2}],"c":{}}"#, 3));
        assert!(!nesting_within(r#"{"a":[1,{"b":2}],"c":{}}"#, 2));
        // Brackets in strings, and escaped quotes that do not end them.
        assert!(nesting_within(r#"{"a":"[[[{{{","b":"\"[[[","c":"\\"}"#, 1));
        assert!(!nesting_within(r#"{"a":"\\",  "b":[[]]}"#, 2));
        // At the limit and one past it; a tree reader refuses what is deep enough.
        let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(nesting_within(&deep(64), 64));
        assert!(serde_json::from_str::<Value>(&deep(64)).is_ok());
        assert!(!nesting_within(&deep(65), 64));
        assert!(serde_json::from_str::<Value>(&deep(200)).is_err());
    }

    #[test]
    fn members_set_that_are_missing_are_added_at_the_end() {
        let object = RawObject::parse(r#"{"id":"a","model":"up","choices":[1.50]}"#).expect("object");
        let out = object.spliced_adding(&[("model", r#""grok""#), ("usage", r#"{"total_tokens":3}"#)]);
        assert_eq!(
            out,
            r#"{"id":"a","model":"grok","choices":[1.50],"usage":{"total_tokens":3}}"#
        );
        let empty = RawObject::parse("{}").expect("object");
        assert_eq!(empty.spliced_adding(&[("usage", "1")]), r#"{"usage":1}"#);
        let parsed: Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(parsed["usage"]["total_tokens"], 3);
    }

    #[test]
    fn splices_members_in_the_upstreams_order_and_keeps_the_rest_as_it_came() {
        let chunk = r#"{"id":"c1","object":"chat.completion.chunk","model":"up/model-7b",
            "choices":[{"index":0,"delta":{"content":"h\u00e9llo"},"finish_reason":null}],"x":1.50}"#;
        let object = RawObject::parse(chunk).unwrap();
        let out = object.spliced(&[("model", "\"grok-4\""), ("usage", "{}")]);
        assert_eq!(
            out,
            r#"{"id":"c1","object":"chat.completion.chunk","model":"grok-4","choices":[{"index":0,"delta":{"content":"h\u00e9llo"},"finish_reason":null}],"x":1.50}"#
        );
        // The same document as the upstream's, but the model.
        let mut expected: Value = serde_json::from_str(chunk).unwrap();
        expected["model"] = json!("grok-4");
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected);
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let object = RawObject::parse(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        assert_eq!(object.get("a").unwrap().get(), "3");
        assert_eq!(object.spliced(&[]), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn what_is_not_a_plain_object_is_left_to_the_general_path() {
        for json in ["[1]", "\"s\"", "null", "{\"a\":", "{\"k\\u0065y\":1}", "not json"] {
            assert!(RawObject::parse(json).is_none(), "{json}");
        }
    }

    #[test]
    fn counts_generated_text_as_the_tree_walk_does() {
        let chunks = [
            json!({"choices": [{"delta": {"content": "héllo \"you\"", "reasoning_content": "think"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "get", "arguments": "{\"q\":1}"}}]}}]}),
            json!({"choices": [{"delta": {"function_call": {"name": "f", "arguments": "{}"}}}, {"text": "abc"}]}),
            json!({"choices": [{"delta": {"content": 5, "tool_calls": "no", "refusal": null}}]}),
            json!({"choices": "none"}),
            json!({"usage": {"prompt_tokens": 3}}),
            json!({"choices": [{"delta": {"content": {"nested": ["x"]}, "tool_calls": [{"function": "f"}, 7]}}]}),
            json!({"choices": [{"delta": "text", "text": ["no"]}, 3, null]}),
            json!({"choices": [{"delta": {"tool_calls": null, "function_call": {"name": 1, "arguments": "ab"}}}]}),
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "\u{e9}\n"}, "finish_reason": null}]}),
        ];
        for chunk in chunks {
            let by_tree: u64 = chunk["choices"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|choice| {
                    crate::usage::generated_chars(&choice["delta"])
                        + choice["text"].as_str().map_or(0, |text| text.chars().count() as u64)
                })
                .sum();
            let text = chunk.to_string();
            let raw = RawObject::parse(&text).unwrap();
            assert_eq!(chunk_generated_chars(&raw), by_tree, "{chunk}");
        }
        // A repeated key fails the one-pass read; the member-by-member read takes the last.
        let repeated = r#"{"choices":[{"delta":{"content":"a","content":"bcd"}}]}"#;
        assert_eq!(chunk_generated_chars(&RawObject::parse(repeated).unwrap()), 3);
    }
}
