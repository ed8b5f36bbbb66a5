//! xAI's gRPC API, the wire the official `xai-sdk` speaks, on a listener of its own.
//!
//! Every call goes through the same use cases as REST: the key is authenticated by
//! [`KeyService`], a completion is admitted, answered and settled by [`Inference`] (ACLs,
//! limits, the credit hold, the tool loop, the usage record), deferred completions share REST's
//! [`Deferred`] records. The upstream stays OpenAI-compatible REST: a request is translated into
//! the chat shape the gateway speaks ([`convert`]) and the answer back into the SDK's messages.
//! Only this crate knows gRPC statuses ([`status`]).
//!
//! The schema is xAI's as the SDK 1.21.0 ships it (`proto/`, vendored by
//! `scripts/vendor-xai-protos`); the code is generated at build time from its descriptors, so no
//! `protoc` is needed.

mod auth;
mod chat;
mod convert;
mod media;
mod models;
mod status;
mod stored;

use std::net::SocketAddr;
use std::sync::Arc;

use tollgate_core::{AdmitError, Charged, Deferred, Inference, KeyService, Responses, SearchCall};
use tollgate_domain::{Clock, TokenUsage};
use tollgate_gateway::pool::UpstreamEvent;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

/// The generated messages and services (package `xai_api`).
#[allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub, rust_2018_idioms)]
pub mod proto {
    tonic::include_proto!("xai_api");
}

/// The largest message either way: the SDK's own limit (20 MiB).
pub const MAX_MESSAGE_BYTES: usize = 20 * 1024 * 1024;

/// What the surface reports to the operator's metrics (the server wires its registry in; the
/// default does nothing).
pub trait Telemetry: Send + Sync + 'static {
    /// An upstream call failed or an upstream was ejected.
    fn upstream_event(&self, _event: &UpstreamEvent<'_>) {}
    /// A request was settled.
    fn charged(&self, _model: &str, _usage: &TokenUsage, _charged: Charged) {}
    /// A server-side search finished.
    fn search(&self, _call: &SearchCall) {}
    /// A request was refused at admission.
    fn refused(&self, _error: &AdmitError) {}
}

impl Telemetry for () {}

/// The use cases the gRPC services call.
#[derive(Clone)]
pub struct Services {
    /// Inference: admit, answer, settle.
    pub inference: Inference,
    /// Key authentication.
    pub keys: KeyService,
    /// Deferred chat completions (shared with REST).
    pub deferred: Deferred,
    /// Stored completions: REST's stored responses.
    pub responses: Responses,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where keys are made, for the wrong-key message.
    pub console_url: String,
    /// The operator's metrics.
    pub telemetry: Arc<dyn Telemetry>,
}

/// TLS for the listener: a PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The certificate chain (PEM).
    pub cert_pem: Vec<u8>,
    /// The private key (PEM).
    pub key_pem: Vec<u8>,
}

/// Serves the gRPC API on `listener` (with `tls`, else plaintext for loopback or behind a
/// TLS-terminating proxy) until `shutdown` resolves; calls in flight finish first.
///
/// Clients' keep-alive pings are accepted however often they come (the SDK pings every 30 s
/// when idle; the HTTP/2 server here keeps no ping strikes, so no `too_many_pings` GOAWAY).
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let services = Arc::new(services);
    let mut server = Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        server = server.tls_config(ServerTlsConfig::new().identity(Identity::from_pem(tls.cert_pem, tls.key_pem)))?;
    }
    let chat = proto::chat_server::ChatServer::new(chat::ChatService::new(Arc::clone(&services)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let models = proto::models_server::ModelsServer::new(models::ModelsService::new(Arc::clone(&services)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let tokenize = proto::tokenize_server::TokenizeServer::new(models::TokenizeService::new(Arc::clone(&services)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let auth = proto::auth_server::AuthServer::new(auth::AuthService::new(Arc::clone(&services)));
    let embedder = proto::embedder_server::EmbedderServer::new(media::EmbedderService::new(Arc::clone(&services)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let image = proto::image_server::ImageServer::new(media::ImageService::new(Arc::clone(&services)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    server
        .add_service(chat)
        .add_service(models)
        .add_service(tokenize)
        .add_service(auth)
        .add_service(embedder)
        .add_service(image)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// Binds `address` (port 0: any free port) for [`serve`].
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}
