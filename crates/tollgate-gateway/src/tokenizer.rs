//! Tokenizers, for `/v1/tokenize-text`: a Hugging Face `tokenizer.json` named per model (the
//! tokenizer the model server itself uses: Llama, Qwen, Mistral, …), or a tiktoken encoding built
//! into the binary (`cl100k_base`, `o200k_base`). Nothing is downloaded at run time. The count
//! is the text's alone: inference adds a chat template's tokens, so requests are billed for more
//! than this endpoint shows (as xAI's documentation says).

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A tokenizer a model may name.
#[derive(Clone)]
pub struct Tokenizer {
    name: Arc<str>,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tiktoken(fn() -> &'static tiktoken_rs::CoreBPE),
    HuggingFace(Arc<tokenizers::Tokenizer>),
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
    /// The built-in encodings [`Tokenizer::named`] knows.
    pub const NAMES: [&'static str; 2] = ["cl100k_base", "o200k_base"];

    /// The built-in tokenizer called `name`.
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        let bpe: fn() -> &'static tiktoken_rs::CoreBPE = match name {
            "cl100k_base" => tiktoken_rs::cl100k_base_singleton,
            "o200k_base" => tiktoken_rs::o200k_base_singleton,
            _ => return None,
        };
        Some(Self {
            name: name.into(),
            kind: Kind::Tiktoken(bpe),
        })
    }

    /// A Hugging Face tokenizer from its `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let tokenizer = tokenizers::Tokenizer::from_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            name: path.display().to_string().into(),
            kind: Kind::HuggingFace(Arc::new(tokenizer)),
        })
    }

    /// A configured tokenizer: a built-in name, else the path of a `tokenizer.json`.
    pub fn configured(value: &str) -> Result<Self, String> {
        if let Some(tokenizer) = Self::named(value) {
            return Ok(tokenizer);
        }
        if !value.ends_with(".json") {
            return Err(format!(
                "'{value}' is neither a built-in tokenizer ({}) nor the path of a tokenizer.json",
                Self::NAMES.join(", ")
            ));
        }
        Self::from_file(Path::new(value))
    }

    /// Its name (a built-in's, or the file's path).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `text` as tokens, without the special tokens a model adds around a prompt (special-token
    /// text is treated as plain text by the built-in encodings). The tokens' bytes, in order,
    /// are the text's. CPU-bound: call it off the async runtime for long texts.
    #[must_use]
    pub fn tokenize(&self, text: &str) -> Vec<Token> {
        match &self.kind {
            Kind::Tiktoken(bpe) => {
                let bpe = bpe();
                bpe.encode_ordinary(text)
                    .into_iter()
                    .map(|id| Token {
                        id,
                        bytes: bpe.decode_bytes(&[id]).unwrap_or_default(),
                    })
                    .collect()
            }
            Kind::HuggingFace(tokenizer) => {
                let Ok(encoding) = tokenizer.encode(text, false) else {
                    return Vec::new();
                };
                // Each token's bytes are its span of the text (byte offsets). Tokens that share a
                // span (a character split over byte-level tokens) give it to the first.
                let mut covered = 0;
                encoding
                    .get_ids()
                    .iter()
                    .zip(encoding.get_offsets())
                    .map(|(&id, &(start, end))| {
                        let start = start.max(covered);
                        let bytes = if end > start {
                            text.as_bytes().get(start..end).map(<[u8]>::to_vec).unwrap_or_default()
                        } else {
                            Vec::new()
                        };
                        covered = covered.max(end);
                        Token { id, bytes }
                    })
                    .collect()
            }
        }
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
        assert!(
            Tokenizer::configured("gpt2")
                .unwrap_err()
                .contains("neither a built-in")
        );
        assert!(Tokenizer::configured("/nonexistent/tokenizer.json").is_err());
    }

    #[test]
    fn hugging_face_tokenizer_files() {
        // The test kit's small word-level tokenizer.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tollgate-testkit/data/tokenizer.json");
        let tokenizer = Tokenizer::configured(path).unwrap();
        let tokens = tokenizer.tokenize("hello world, hello!");
        let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
        assert_eq!(ids, vec![1, 2, 3, 1, 4]);
        assert_eq!(tokens[1].bytes, b"world");
        assert_eq!(tokenizer.tokenize("goodbye")[0].id, 0, "unknown words are [UNK]");
    }
}
