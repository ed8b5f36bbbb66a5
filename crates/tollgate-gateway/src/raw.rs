//! Reading an upstream's JSON without building a tree of it. A stream chunk is relayed almost
//! as it came: only its `model` (our public name) and its `usage` (with the cost) change, and
//! billing reads only the usage and the generated text. [`RawObject`] keeps an object's members
//! as the upstream's own text, so a chunk is scanned once, the few fields needed are read from
//! it, and it is written back by splicing, with no `Value` built and no number re-printed.

/// A JSON object's members in the upstream's order, each value its raw JSON text. A key that
/// appears twice keeps its first place and its last value, as a parser building a map would.
#[derive(Debug)]
pub struct RawObject<'a> {
    members: Vec<(&'a str, &'a str)>,
}

/// Where an object's members lie in its text, as [`RawObject::parse`] found them (kept without
/// the text, to read the object again without scanning it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberSpans(Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>);

impl<'a> RawObject<'a> {
    /// `json` as an object, read by [`Scan`] (so what it reads, serde_json reads the same, and
    /// nested no deeper than [`MAX_DEPTH`], within serde_json's limit: a tree reader later reads
    /// it too); `None` when it is not one, or a key needs unescaping (which no upstream's keys
    /// do): the caller then takes the general path.
    #[must_use]
    pub fn parse(json: &'a str) -> Option<Self> {
        let mut members: Vec<(&'a str, &'a str)> = Vec::with_capacity(8);
        let mut scan = Scan::new(json);
        scan.members(|scan, key| {
            let value = json.get(scan.value()?)?;
            match members.iter_mut().find(|(name, _)| *name == key) {
                Some(member) => member.1 = value,
                None => members.push((key, value)),
            }
            Some(())
        })?;
        scan.end()?;
        Some(Self { members })
    }

    /// Where the members lie in `json`, the text this was read from: to read the object again
    /// later ([`Self::at_spans`]) without scanning it.
    #[must_use]
    pub fn spans(&self, json: &'a str) -> MemberSpans {
        // Every key and value is a slice of `json`: its offset is the distance between them.
        let span = |part: &str| {
            let start = (part.as_ptr() as usize).wrapping_sub(json.as_ptr() as usize);
            start..start + part.len()
        };
        MemberSpans(
            self.members
                .iter()
                .map(|(key, value)| (span(key), span(value)))
                .collect(),
        )
    }

    /// The object [`Self::parse`] read from `json`, from the spans it found there; `None` when
    /// a span does not lie in `json` (spans of another text).
    #[must_use]
    pub fn at_spans(json: &'a str, spans: &MemberSpans) -> Option<Self> {
        let members = spans
            .0
            .iter()
            .map(|(key, value)| Some((json.get(key.clone())?, json.get(value.clone())?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self { members })
    }

    /// The raw JSON text of member `key`'s value.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.members
            .iter()
            .find_map(|(name, value)| (*name == key).then_some(*value))
    }

    /// Whether the object has member `key`.
    #[must_use]
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// About how long the object's text is.
    #[must_use]
    pub fn len_hint(&self) -> usize {
        self.members
            .iter()
            .map(|(key, value)| key.len() + value.len() + 4)
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
                .unwrap_or(value);
            out.push_str(json);
        }
        out.push('}');
    }
}

/// A stream chunk read in one pass, to relay it: the characters its choices generated (each
/// choice's delta as [`crate::usage::generated_chars`] counts a message, and a text completion's
/// `text`), its usage report, and where its `model` and `usage`
/// values lie in its text, so they can be replaced with everything else written as it came.
/// Other members are checked and skipped, not kept. A chunk this does not read (keys with
/// escapes, choices of unusual shape, a repeated key inside a choice, anything that is not
/// JSON) is left to the general path, which reads it as a tree.
#[derive(Debug)]
pub struct Chunk<'a> {
    text: &'a str,
    /// Every `model` value's place (a repeated key has each replaced).
    models: Vec<std::ops::Range<usize>>,
    /// Every `usage` value's place, and the last value (as a parser building a map keeps).
    usages: Vec<std::ops::Range<usize>>,
    usage: Option<&'a str>,
    generated: u64,
}

impl<'a> Chunk<'a> {
    /// `text` read, when it is an object this reads.
    #[must_use]
    pub fn parse(text: &'a str) -> Option<Self> {
        let mut chunk = Self {
            text,
            models: Vec::new(),
            usages: Vec::new(),
            usage: None,
            generated: 0,
        };
        let mut scan = Scan::new(text);
        scan.members(|scan, key| {
            match key {
                "model" => chunk.models.push(scan.value()?),
                "usage" => {
                    let place = scan.value()?;
                    chunk.usage = text.get(place.clone());
                    chunk.usages.push(place);
                }
                // A repeated key's last value counts, as in a map.
                "choices" => chunk.generated = scan.choices()?,
                _ => scan.skip()?,
            }
            Some(())
        })?;
        scan.end()?;
        Some(chunk)
    }

    /// The characters the chunk's choices generated.
    #[must_use]
    pub fn generated_chars(&self) -> u64 {
        self.generated
    }

    /// The chunk's usage report, when it has one.
    #[must_use]
    pub fn usage(&self) -> Option<tollgate_domain::TokenUsage> {
        self.usage.and_then(crate::usage::parse_usage_text)
    }

    /// The chunk's length.
    #[must_use]
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether the chunk is empty text (never: it is an object).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Writes the chunk to `out` as it came, but for its `model` values replaced with the JSON
    /// text `model`, and its `usage` values with `usage` (each only where the chunk has one).
    pub fn splice_into(&self, out: &mut String, model: Option<&str>, usage: Option<&str>) {
        let mut places: Vec<(&std::ops::Range<usize>, &str)> = Vec::with_capacity(2);
        if let Some(model) = model {
            places.extend(self.models.iter().map(|range| (range, model)));
        }
        if let Some(usage) = usage {
            places.extend(self.usages.iter().map(|range| (range, usage)));
        }
        places.sort_unstable_by_key(|(range, _)| range.start);
        let mut written = 0;
        for (range, with) in places {
            out.push_str(&self.text[written..range.start]);
            out.push_str(with);
            written = range.end;
        }
        out.push_str(&self.text[written..]);
    }
}

/// Deepest nesting a chunk may have: well within serde_json's 128 levels, so what is deeper
/// is left to it.
const MAX_DEPTH: usize = 100;

/// A cursor over JSON text that checks values and skips them without building them: RFC 8259's
/// grammar as serde_json reads it (no trailing commas or comments, no control characters in a
/// string, a number with no leading zero). What it reads, serde_json reads the same; what it
/// refuses (`None`), the caller leaves to serde_json.
struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    depth: usize,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            bytes: text.as_bytes(),
            at: 0,
            depth: 0,
        }
    }

    /// The next byte that is not whitespace, not taken.
    fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.bytes.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\r' | b'\t') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    /// Takes `byte`, the next one that is not whitespace.
    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// Nothing but whitespace is left.
    fn end(&mut self) -> Option<()> {
        self.peek().is_none().then_some(())
    }

    /// Reads an object, calling `member` at each member's value with its key (a key with an
    /// escape is not read: `None`).
    fn members(&mut self, member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.object(Self::plain_key, member)
    }

    /// Reads an object whose keys `key` reads, calling `member` at each member's value.
    fn object(
        &mut self,
        key: fn(&mut Self) -> Option<&'a str>,
        mut member: impl FnMut(&mut Self, &'a str) -> Option<()>,
    ) -> Option<()> {
        self.open(b'{')?;
        if self.peek()? != b'}' {
            loop {
                let key = key(self)?;
                self.eat(b':')?;
                member(self, key)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.close()
    }

    /// Reads an object of fields that count characters: `field` reads one member's value (each
    /// field at most once, as serde refuses a struct's duplicate field) and says how many it
    /// counts; the object's count is their sum.
    fn counted(&mut self, mut field: impl FnMut(&mut Self, &'a str, &mut Seen) -> Option<u64>) -> Option<u64> {
        let mut chars = 0u64;
        let mut seen = Seen::default();
        self.members(|scan, key| {
            chars = chars.saturating_add(field(scan, key, &mut seen)?);
            Some(())
        })?;
        Some(chars)
    }

    /// Reads an array, calling `element` at each element.
    fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.open(b'[')?;
        if self.peek()? != b']' {
            loop {
                element(self)?;
                match self.peek()? {
                    b',' => self.at += 1,
                    b']' => break,
                    _ => return None,
                }
            }
        }
        self.close()
    }

    fn open(&mut self, bracket: u8) -> Option<()> {
        self.eat(bracket)?;
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// Takes the closing bracket [`Self::members`] or [`Self::elements`] stopped at.
    fn close(&mut self) -> Option<()> {
        self.at += 1;
        self.depth -= 1;
        Some(())
    }

    /// A key with no escapes, without its quotes.
    fn plain_key(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        // An escaped quote ends no key this reads: the backslash before it refuses the key.
        let end = start + memchr::memchr(b'"', self.bytes.get(start..)?)?;
        if self.bytes[start..end].iter().any(|&byte| byte == b'\\' || byte < 0x20) {
            return None;
        }
        self.at = end + 1;
        self.text.get(start..end)
    }

    /// Skips a value; returns where it lies.
    fn value(&mut self) -> Option<std::ops::Range<usize>> {
        self.peek()?;
        let start = self.at;
        self.skip()?;
        Some(start..self.at)
    }

    /// Skips a value.
    fn skip(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(false).map(drop),
            // Any key, escapes and all.
            b'{' => self.object(|scan| scan.string(false).map(|_| ""), |scan, _| scan.skip()),
            b'[' => self.elements(Self::skip),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// Takes `null` when it is next.
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            return Some(true);
        }
        Some(false)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.at + word.len();
        (self.bytes.get(self.at..end)? == word).then(|| self.at = end)
    }

    fn number(&mut self) -> Option<()> {
        let digits = |scan: &mut Self| {
            let start = scan.at;
            while scan.bytes.get(scan.at).is_some_and(u8::is_ascii_digit) {
                scan.at += 1;
            }
            (scan.at > start).then_some(())
        };
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        if self.bytes.get(self.at) == Some(&b'0') {
            self.at += 1;
            if self.bytes.get(self.at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        } else {
            digits(self)?;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            digits(self)?;
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            digits(self)?;
        }
        Some(())
    }

    /// Skips a string, counting the characters it stands for when `decoded` (and then checking
    /// its escapes as decoding them does: a `\u` surrogate must pair; serde_json skips a string
    /// it does not decode without that check).
    fn string(&mut self, decoded: bool) -> Option<u64> {
        self.eat(b'"')?;
        let mut chars = 0u64;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let found = memchr::memchr2(b'"', b'\\', rest)?;
            let run = &rest[..found];
            if run.iter().any(|&byte| byte < 0x20) {
                return None;
            }
            if decoded {
                // Every byte but a UTF-8 continuation byte begins a character.
                chars += run.iter().filter(|&&byte| (byte as i8) >= -0x40).count() as u64;
            }
            self.at += found + 1;
            if rest[found] == b'"' {
                return Some(chars);
            }
            self.escape(decoded)?;
            chars += 1;
        }
    }

    /// The rest of an escape, after its backslash (a surrogate pair counts once).
    fn escape(&mut self, decoded: bool) -> Option<()> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        match byte {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(()),
            b'u' => {
                let unit = self.hex4()?;
                if !decoded {
                    return Some(());
                }
                match unit {
                    0xD800..=0xDBFF => {
                        // Its trailing half must follow.
                        (self.bytes.get(self.at..self.at + 2)? == b"\\u").then_some(())?;
                        self.at += 2;
                        matches!(self.hex4()?, 0xDC00..=0xDFFF).then_some(())
                    }
                    0xDC00..=0xDFFF => None,
                    _ => Some(()),
                }
            }
            _ => None,
        }
    }

    fn hex4(&mut self) -> Option<u16> {
        let digits = std::str::from_utf8(self.bytes.get(self.at..self.at + 4)?).ok()?;
        if !digits.bytes().all(|digit| digit.is_ascii_hexdigit()) {
            return None;
        }
        self.at += 4;
        u16::from_str_radix(digits, 16).ok()
    }

    /// A member that counts only when it is a string (anything else counts nothing).
    fn text(&mut self) -> Option<u64> {
        if self.peek()? == b'"' {
            self.string(true)
        } else {
            self.skip().map(|()| 0)
        }
    }

    /// A chunk's `choices`: an array of choice objects, their generated characters summed.
    fn choices(&mut self) -> Option<u64> {
        let mut chars = 0u64;
        self.elements(|scan| {
            let choice = scan.counted(|scan, key, seen| match key {
                "delta" => {
                    seen.first(0)?;
                    if scan.null()? { Some(0) } else { scan.message() }
                }
                "text" => seen.first(1).and_then(|()| scan.text()),
                _ => scan.skip().map(|()| 0),
            })?;
            chars = chars.saturating_add(choice);
            Some(())
        })?;
        Some(chars)
    }

    /// A delta's generated parts, as [`crate::usage::generated_chars`] reads a message.
    fn message(&mut self) -> Option<u64> {
        self.counted(|scan, key, seen| match key {
            "content" => seen.first(0).and_then(|()| scan.text()),
            "refusal" => seen.first(1).and_then(|()| scan.text()),
            "reasoning_content" => seen.first(2).and_then(|()| scan.text()),
            "reasoning" => seen.first(3).and_then(|()| scan.text()),
            "tool_calls" => {
                seen.first(4)?;
                let mut calls = 0u64;
                if !scan.null()? {
                    scan.elements(|scan| {
                        let call = scan.counted(|scan, key, seen| match key {
                            "function" => {
                                seen.first(0)?;
                                if scan.null()? { Some(0) } else { scan.function() }
                            }
                            _ => scan.skip().map(|()| 0),
                        })?;
                        calls = calls.saturating_add(call);
                        Some(())
                    })?;
                }
                Some(calls)
            }
            "function_call" => {
                seen.first(5)?;
                if scan.null()? { Some(0) } else { scan.function() }
            }
            _ => scan.skip().map(|()| 0),
        })
    }

    /// A called function's name and arguments.
    fn function(&mut self) -> Option<u64> {
        self.counted(|scan, key, seen| match key {
            "name" => seen.first(0).and_then(|()| scan.text()),
            "arguments" => seen.first(1).and_then(|()| scan.text()),
            _ => scan.skip().map(|()| 0),
        })
    }
}

/// The fields of one object read so far: a field read twice is refused, as serde refuses a
/// duplicate field of a struct.
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn first(&mut self, field: u8) -> Option<()> {
        let bit = 1 << field;
        if self.0 & bit != 0 {
            return None;
        }
        self.0 |= bit;
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// The reader [`Chunk::parse`] replaced, built on serde's derive: what it reads, the scanner
    /// must read the same.
    mod oracle {
        use std::borrow::Cow;
        use std::fmt;

        use serde::Deserialize;
        use serde::de::{Deserializer, MapAccess, Visitor};
        use serde_json::value::RawValue;

        /// `(model places, usage places, last usage, generated characters)`.
        pub(super) type Read<'a> = (
            Vec<std::ops::Range<usize>>,
            Vec<std::ops::Range<usize>>,
            Option<&'a str>,
            u64,
        );

        /// An object's members as [`super::RawObject::parse`] keeps them, read by serde's
        /// borrowed keys and raw values.
        pub(super) fn members(text: &str) -> Option<Vec<(&str, &str)>> {
            struct Members<'a>(Vec<(&'a str, &'a str)>);

            impl<'de> Deserialize<'de> for Members<'de> {
                fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    struct Object;

                    impl<'de> Visitor<'de> for Object {
                        type Value = Members<'de>;

                        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                            formatter.write_str("a JSON object")
                        }

                        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                            let mut members: Vec<(&'de str, &'de str)> = Vec::new();
                            while let Some(key) = map.next_key::<&'de str>()? {
                                let value = map.next_value::<&'de RawValue>()?.get();
                                match members.iter_mut().find(|(name, _)| *name == key) {
                                    Some(member) => member.1 = value,
                                    None => members.push((key, value)),
                                }
                            }
                            Ok(Members(members))
                        }
                    }

                    deserializer.deserialize_map(Object)
                }
            }

            serde_json::from_str::<Members<'_>>(text).ok().map(|members| members.0)
        }

        pub(super) fn parse(text: &str) -> Option<Read<'_>> {
            let read: ChunkRead<'_> = serde_json::from_str(text).ok()?;
            let place = |value: &RawValue| {
                let start = value.get().as_ptr() as usize - text.as_ptr() as usize;
                start..start + value.get().len()
            };
            Some((
                read.models.iter().map(|value| place(value)).collect(),
                read.usages.iter().map(|value| place(value)).collect(),
                read.usages.last().map(|value| value.get()),
                read.generated,
            ))
        }

        /// What the reader reads in its one pass.
        struct ChunkRead<'a> {
            models: Vec<&'a RawValue>,
            usages: Vec<&'a RawValue>,
            generated: u64,
        }

        impl<'de> Deserialize<'de> for ChunkRead<'de> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Members;

                impl<'de> Visitor<'de> for Members {
                    type Value = ChunkRead<'de>;

                    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                        formatter.write_str("a JSON object")
                    }

                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                        let mut read = ChunkRead {
                            models: Vec::new(),
                            usages: Vec::new(),
                            generated: 0,
                        };
                        // Keys borrowed: one with an escape fails the read (the general path takes it).
                        while let Some(key) = map.next_key::<&'de str>()? {
                            match key {
                                "model" => read.models.push(map.next_value()?),
                                "usage" => read.usages.push(map.next_value()?),
                                // A repeated key's last value counts, as in a map.
                                "choices" => read.generated = map.next_value::<ChoicesChars>()?.0,
                                _ => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(read)
                    }
                }

                deserializer.deserialize_map(Members)
            }
        }

        /// A chunk's `choices`, summed as they are read: an array of choices, or the read fails.
        struct ChoicesChars(u64);

        impl<'de> Deserialize<'de> for ChoicesChars {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Choices;

                impl<'de> Visitor<'de> for Choices {
                    type Value = ChoicesChars;

                    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                        formatter.write_str("an array of choices")
                    }

                    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                        let mut chars = 0u64;
                        while let Some(choice) = seq.next_element::<ChoiceView<'de>>()? {
                            chars = chars.saturating_add(choice.chars());
                        }
                        Ok(ChoicesChars(chars))
                    }
                }

                deserializer.deserialize_seq(Choices)
            }
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

        /// A delta's generated parts, as [`crate::usage::generated_chars`] reads them.
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
        assert_eq!(object.get("a"), Some("3"));
        assert_eq!(object.spliced(&[]), r#"{"a":3,"b":2}"#);
    }

    #[test]
    fn what_is_not_a_plain_object_is_left_to_the_general_path() {
        for json in ["[1]", "\"s\"", "null", "{\"a\":", "{\"k\\u0065y\":1}", "not json"] {
            assert!(RawObject::parse(json).is_none(), "{json}");
        }
    }

    /// What the tree walk counts in a chunk: every choice's delta, and its text.
    fn counted_by_tree(chunk: &Value) -> u64 {
        chunk["choices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|choice| {
                crate::usage::generated_chars(&choice["delta"])
                    + choice["text"].as_str().map_or(0, |text| text.chars().count() as u64)
            })
            .sum()
    }

    /// The one-pass chunk read counts as the tree walk does, or leaves the chunk to the general
    /// path (which walks the tree); its usage is the last one's, as in a map.
    #[test]
    fn a_chunk_is_read_in_one_pass_or_left_to_the_general_path() {
        let read = [
            json!({"choices": [{"delta": {"content": "héllo \"you\"", "reasoning_content": "think"}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "get", "arguments": "{\"q\":1}"}}]}}]}),
            json!({"choices": [{"delta": {"function_call": {"name": "f", "arguments": "{}"}}}, {"text": "abc"}]}),
            json!({"choices": [{"delta": {"content": 5, "tool_calls": null, "refusal": null}}]}),
            json!({"usage": {"prompt_tokens": 3}}),
            json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}),
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "\u{e9}\n"}, "finish_reason": null}]}),
        ];
        for chunk in read {
            let by_tree = counted_by_tree(&chunk);
            let text = chunk.to_string();
            let one_pass = Chunk::parse(&text).unwrap_or_else(|| panic!("{chunk}"));
            assert_eq!(one_pass.generated_chars(), by_tree, "{chunk}");
            assert_eq!(one_pass.usage(), crate::usage::parse_usage(&chunk["usage"]), "{chunk}");
        }
        // Odd shapes: read with the tree walk's count, or left to the general path.
        for chunk in [
            json!({"choices": [{"delta": {"content": 5, "tool_calls": "no", "refusal": null}}]}),
            json!({"choices": [{"delta": {"content": {"nested": ["x"]}, "tool_calls": [{"function": "f"}, 7]}}]}),
            json!({"choices": [{"delta": {"tool_calls": null, "function_call": {"name": 1, "arguments": "ab"}}}]}),
            json!({"choices": [{"delta": null, "text": null}, {}]}),
        ] {
            let by_tree = counted_by_tree(&chunk);
            let text = chunk.to_string();
            if let Some(read) = Chunk::parse(&text) {
                assert_eq!(read.generated_chars(), by_tree, "{chunk}");
            }
        }
        for odd in [
            r#"{"choices":"none"}"#,
            r#"{"choices":[{"delta":"text"},3,null]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":"bcd"}}]}"#,
            r#"{"ch\u006fices":[]}"#,
            "[1]",
            "{\"model\":",
        ] {
            assert!(Chunk::parse(odd).is_none(), "{odd}");
        }
        let twice = Chunk::parse(
            r#"{"usage":{"prompt_tokens":1},"choices":[{"text":"ab"}],"choices":[],"usage":{"prompt_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(
            (twice.generated_chars(), twice.usage().map(|u| u.prompt_tokens)),
            (0, Some(2))
        );
    }

    /// Reads `text` with the scanner and with the serde reader it replaced: whatever the scanner
    /// reads, serde reads the same; `usual`: the scanner must read it.
    fn reads_as_serde_does(text: &str, usual: bool) {
        let scanned = Chunk::parse(text).map(|chunk| (chunk.models, chunk.usages, chunk.usage, chunk.generated));
        match (scanned, oracle::parse(text)) {
            (Some(scanned), Some(read)) => assert_eq!(scanned, read, "{text}"),
            (Some(_), None) => panic!("the scanner read what serde refuses: {text}"),
            (None, Some(_)) => assert!(!usual, "the scanner refused a usual chunk: {text}"),
            (None, None) => {}
        }
    }

    /// [`RawObject::parse`] against serde's reading of an object's members, as
    /// [`reads_as_serde_does`] checks a chunk.
    fn members_read_as_serde_does(text: &str, usual: bool) {
        let scanned = RawObject::parse(text).map(|object| {
            // Read again from where its members lie: the same members.
            let again = RawObject::at_spans(text, &object.spans(text)).expect("its own spans");
            assert_eq!(again.members, object.members, "{text}");
            object.members
        });
        match (scanned, oracle::members(text)) {
            (Some(scanned), Some(read)) => assert_eq!(scanned, read, "{text}"),
            (Some(_), None) => panic!("the scanner read what serde refuses: {text}"),
            (None, Some(_)) => assert!(!usual, "the scanner refused a usual object: {text}"),
            (None, None) => {}
        }
    }

    /// Calls `check` with `text` (usual) and with it cut short at every character, or with one
    /// character changed or inserted there (not usual).
    fn with_every_cut_and_change(text: &str, check: fn(&str, bool)) {
        const CHANGES: [&str; 17] = [
            " ",
            "\"",
            "\\",
            ",",
            ":",
            "}",
            "]",
            "{",
            "[",
            "0",
            "-",
            "e",
            ".",
            "n",
            "\u{1}",
            "é",
            "\u{1f600}",
        ];
        check(text, true);
        let boundaries: Vec<usize> = (0..text.len()).filter(|at| text.is_char_boundary(*at)).collect();
        for &at in &boundaries {
            check(&text[..at], false);
            let next = text[at..].chars().next().map_or(0, char::len_utf8);
            for change in CHANGES {
                check(&format!("{}{change}{}", &text[..at], &text[at + next..]), false);
                check(&format!("{}{change}{}", &text[..at], &text[at..]), false);
            }
        }
    }

    /// Chunks as upstreams write them, with odd spacing, escapes, characters outside the
    /// basic plane and numbers.
    const USUAL_CHUNKS: [&str; 10] = [
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"mock-model","choices":[{"index":0,"delta":{"role":"assistant","content":"Hello"},"logprobs":null,"finish_reason":null}]}"#,
        r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":2},"completion_tokens_details":{"reasoning_tokens":5}}}"#,
        " {\n \"model\" : \"m\" ,\t\"choices\" : [ { \"delta\" : { \"content\" : \"a\\nb\\u00e9\\ud83d\\ude00 \\\"q\\\"\" } } ] , \"usage\" : null } \r\n",
        r#"{"choices":[{"delta":{"reasoning_content":"h\u00e9 \/ \b\f\r\t","tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}}]}"#,
        r#"{"choices":[{"delta":{"function_call":{"name":"f","arguments":"{}"},"refusal":null,"reasoning":"r"}},{"text":"abc","index":1}]}"#,
        r#"{"object":"text_completion","choices":[{"text":"日本語 ünï","index":0,"logprobs":{"tokens":["a"],"top":[{"a":-0.5e-3}]},"finish_reason":null}],"model":"x"}"#,
        r#"{"x":[1,-0,0.5,-1.25e+10,3E-2,true,false,null,{},[],{"k\u0065y":"v"},"\ud800"],"choices":[]}"#,
        r#"{"model":"a","usage":{"prompt_tokens":1},"model":"b","choices":[{"text":"ab"}],"choices":[{"text":"c"}],"usage":{"prompt_tokens":2}}"#,
        r#"{"choices":[{"delta":{"content":5,"tool_calls":null,"refusal":{"x":["y"]}},"text":7}]}"#,
        "{}",
    ];

    /// Each usual chunk read as serde reads it; and each cut short at every character, or with
    /// one character changed, read the same as serde reads it or refused.
    #[test]
    fn the_scanner_reads_what_serde_reads_the_same_way() {
        for text in USUAL_CHUNKS {
            with_every_cut_and_change(text, reads_as_serde_does);
        }
        // Nesting up to the scanner's limit is read; past it, left to serde.
        for depth in [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 127, 128, 129, 200] {
            let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            reads_as_serde_does(&deep, depth < MAX_DEPTH);
        }
    }

    /// A whole answer's members (and a chunk's) read as serde reads them, the same way.
    #[test]
    fn an_objects_members_are_read_as_serde_reads_them() {
        let answers = [
            r#"{"id":"chatcmpl-9","object":"chat.completion","created":1700000000,"model":"mock-model","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":7,"total_tokens":16,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}"#,
            " {\"usage\" : {\"prompt_tokens\":1} ,\n\"id\":\"a\", \"usage\":null,\"x\":[{\"y\":\"\\ud83d\\ude00 \\\"\"}, -1.5E+3]}\t",
        ];
        for text in answers.into_iter().chain(USUAL_CHUNKS) {
            with_every_cut_and_change(text, members_read_as_serde_does);
        }
        for depth in [MAX_DEPTH - 1, MAX_DEPTH, 127, 128, 129] {
            let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            members_read_as_serde_does(&deep, depth < MAX_DEPTH);
        }
    }

    #[test]
    fn a_chunk_is_written_as_it_came_but_for_model_and_usage() {
        let text = r#"{"id":"c1", "model" : "up/model-7b","choices":[{"index":0,"delta":{"content":"h\u00e9llo"}}],"usage":null,"x":1.50}"#;
        let chunk = Chunk::parse(text).unwrap();
        let mut out = String::new();
        chunk.splice_into(&mut out, Some(r#""grok-4""#), Some(r#"{"total_tokens":3}"#));
        assert_eq!(
            out,
            r#"{"id":"c1", "model" : "grok-4","choices":[{"index":0,"delta":{"content":"h\u00e9llo"}}],"usage":{"total_tokens":3},"x":1.50}"#
        );
        let mut expected: Value = serde_json::from_str(text).unwrap();
        expected["model"] = json!("grok-4");
        expected["usage"] = json!({"total_tokens": 3});
        assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), expected);
        // Nothing asked: the chunk as it came; a member it lacks is not added.
        let mut same = String::new();
        chunk.splice_into(&mut same, None, None);
        assert_eq!(same, text);
        let bare = Chunk::parse(r#"{"choices":[]}"#).unwrap();
        let mut out = String::new();
        bare.splice_into(&mut out, Some("\"m\""), Some("{}"));
        assert_eq!(out, r#"{"choices":[]}"#);
        // A repeated model has each replaced.
        let repeated = Chunk::parse(r#"{"model":"a","model":"b"}"#).unwrap();
        let mut out = String::new();
        repeated.splice_into(&mut out, Some("\"m\""), None);
        assert_eq!(out, r#"{"model":"m","model":"m"}"#);
    }
}
