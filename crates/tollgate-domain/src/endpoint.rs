//! The inference endpoints a key's ACLs name (`api-key:endpoint:<name>`) and usage records carry.

use std::fmt;
use std::str::FromStr;

/// An inference endpoint, as ACLs and usage name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// Chat completions (`/v1/chat/completions`), text and vision, and responses
    /// (`/v1/responses`).
    Chat,
    /// Legacy text completions (`/v1/completions`).
    Completions,
    /// Embeddings (`/v1/embeddings`), priced per input token.
    Embeddings,
    /// Image generation (`/v1/images/generations`), priced per image.
    Image,
    /// Tokenizing text (`/v1/tokenize-text`), not charged.
    Tokenize,
    /// The model listings (`/v1/models`, `/v1/language-models`, …), not charged.
    Models,
    /// The server-side web search tool (`{"type": "web_search"}` in a request's `tools`), a fee
    /// per search.
    WebSearch,
    /// The server-side X search tool (`{"type": "x_search"}`), a fee per search.
    XSearch,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 8] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Image,
        Endpoint::Tokenize,
        Endpoint::Models,
        Endpoint::WebSearch,
        Endpoint::XSearch,
    ];

    /// The name in ACLs and usage records.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Image => "image",
            Endpoint::Tokenize => "tokenize",
            Endpoint::Models => "models",
            Endpoint::WebSearch => "web_search",
            Endpoint::XSearch => "x_search",
        }
    }

    /// What it covers, for the endpoint list.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Endpoint::Chat => "Chat completions (/v1/chat/completions), text and vision, and responses (/v1/responses)",
            Endpoint::Completions => "Legacy text completions (/v1/completions)",
            Endpoint::Embeddings => "Embeddings (/v1/embeddings), priced per input token",
            Endpoint::Image => "Image generation (/v1/images/generations), priced per image",
            Endpoint::Tokenize => "Tokenize text (/v1/tokenize-text), not charged",
            Endpoint::Models => {
                "Model listings with prices (/v1/models, /v1/language-models, /v1/embedding-models, /v1/image-generation-models), not charged"
            }
            Endpoint::WebSearch => "The server-side web search tool in chat and responses, a fee per search",
            Endpoint::XSearch => "The server-side X search tool in chat and responses, a fee per search",
        }
    }
}

/// A tool Tollgate runs itself during a request (xAI's server-side tools): the model asks, the
/// platform searches and feeds the results back. Each is also an endpoint ACL name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ServerTool {
    /// Web search.
    WebSearch,
    /// Search of posts on X.
    XSearch,
}

impl ServerTool {
    /// Every server-side tool.
    pub const ALL: [ServerTool; 2] = [ServerTool::WebSearch, ServerTool::XSearch];

    /// The name in a request's `tools` (`{"type": "web_search"}`), in ACLs and in usage.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        self.endpoint().as_str()
    }

    /// The endpoint ACL that grants it.
    #[must_use]
    pub const fn endpoint(self) -> Endpoint {
        match self {
            ServerTool::WebSearch => Endpoint::WebSearch,
            ServerTool::XSearch => Endpoint::XSearch,
        }
    }

    /// The tool of this name, if any.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|tool| tool.as_str() == name)
    }
}

impl fmt::Display for ServerTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown endpoint '{0}'")]
pub struct UnknownEndpoint(pub String);

impl FromStr for Endpoint {
    type Err = UnknownEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Endpoint::ALL
            .into_iter()
            .find(|endpoint| endpoint.as_str() == s)
            .ok_or_else(|| UnknownEndpoint(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for endpoint in Endpoint::ALL {
            assert_eq!(endpoint.as_str().parse::<Endpoint>(), Ok(endpoint));
        }
        assert!("imagez".parse::<Endpoint>().is_err());
    }
}
