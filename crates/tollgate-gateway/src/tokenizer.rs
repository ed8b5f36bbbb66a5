//! Tokenizers, for `/v1/tokenize-text`: the tiktoken encodings built into the binary
//! (`cl100k_base`, `o200k_base`; nothing is downloaded at run time), named per model in the
//! configuration. The count is the text's alone: inference adds a chat template's tokens, so
//! requests are billed for more than this endpoint shows (as xAI's documentation says).

use std::fmt;

/// A tokenizer a model may name.
#[derive(Clone, Copy)]
pub struct Tokenizer {
    name: &'static str,
    bpe: fn() -> &'static tiktoken_rs::CoreBPE,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Tokenizer").field(&self.name).finish()
    }
}

/// One token: its id and its bytes (which may be part of a UTF-8 character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The id.
    pub id: u32,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Tokenizer {
    /// The names [`Tokenizer::named`] knows.
    pub const NAMES: [&'static str; 2] = ["cl100k_base", "o200k_base"];

    /// The tokenizer called `name`, if built in.
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "cl100k_base" => Some(Self {
                name: "cl100k_base",
                bpe: tiktoken_rs::cl100k_base_singleton,
            }),
            "o200k_base" => Some(Self {
                name: "o200k_base",
                bpe: tiktoken_rs::o200k_base_singleton,
            }),
            _ => None,
        }
    }

    /// Its name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `text` as tokens (special-token text is treated as plain text). CPU-bound: call it off
    /// the async runtime for long texts.
    #[must_use]
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        let bpe = (self.bpe)();
        bpe.encode_ordinary(text)
            .into_iter()
            .map(|id| Token {
                id,
                bytes: bpe.decode_bytes(&[id]).unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        let cl100k = Tokenizer::named("cl100k_base").unwrap();
        let tokens = cl100k.tokenize("Hello world");
        assert_eq!(tokens.iter().map(|t| t.id).collect::<Vec<_>>(), vec![9906, 1917]);
        assert_eq!(tokens[1].bytes, b" world");
        let joined: Vec<u8> = cl100k
            .tokenize("héllo <|endoftext|>")
            .into_iter()
            .flat_map(|t| t.bytes)
            .collect();
        assert_eq!(
            joined,
            "héllo <|endoftext|>".as_bytes(),
            "the bytes make the text again"
        );
        assert!(Tokenizer::named("gpt2").is_none());
    }
}
