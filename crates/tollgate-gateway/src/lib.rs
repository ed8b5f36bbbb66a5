//! The inference path's outbound half: request/response wire types, the model catalog, the
//! OpenAI-compatible upstream client, SSE decoding and usage extraction.
//!
//! **Invariant:** this crate never touches the ledger or SQL and knows nothing of API-key auth.
//! It returns usage ([`tollgate_domain::TokenUsage`]); billing it is the caller's job.

pub mod catalog;
mod client;
pub mod pool;
pub mod raw;
pub mod responses;
pub mod search;
pub mod sse;
pub mod tokenizer;
pub mod upstream;
pub mod usage;
pub mod wire;

pub use catalog::{Catalog, ModelRoute};
pub use upstream::{GatewayError, Upstream};
