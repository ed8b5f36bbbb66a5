//! The HTTP client for calls to model upstreams.
//!
//! Upstream calls go through hyper's pooled client directly: keep-alive, TCP_NODELAY, TLS with
//! rustls and the webpki roots (HTTP/2 when a TLS upstream offers it), a connect timeout, and a
//! timeout on each read (the answer's head, then every part of its body). reqwest, which sits
//! on the same hyper client, spent more on each call than the call itself (a redirect layer that
//! re-parses the URL, proxy matching, URL conversions): a few percent of a request's whole cost.
//!
//! An upstream that the environment routes through a proxy (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `ALL_PROXY`, less `NO_PROXY`; read once, at start) is called through reqwest instead, which
//! speaks to proxies; so proxy settings behave exactly as they did.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::upstream::GatewayError;

const AGENT: &str = concat!("tollgate/", env!("CARGO_PKG_VERSION"));

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE: usize = 256;

/// The client every upstream of a (connect, read) timeout pair shares. Cheap to clone.
#[derive(Clone)]
pub struct UpstreamClient {
    direct: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    proxied: reqwest::Client,
    proxies: std::sync::Arc<hyper_util::client::proxy::matcher::Matcher>,
    read_timeout: Duration,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TLS configuration was refused.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// reqwest (the proxied client) could not be built.
    #[error(transparent)]
    Reqwest(#[from] reqwest::Error),
}

impl UpstreamClient {
    /// A client that gives up connecting after `connect_timeout` and waits at most
    /// `read_timeout` for each read of an answer.
    pub fn new(connect_timeout: Duration, read_timeout: Duration) -> Result<Self, ClientError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.enforce_http(false);
        let tls =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                })
                .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let direct = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            direct,
            proxied: reqwest_client(connect_timeout, read_timeout)?,
            proxies: std::sync::Arc::new(hyper_util::client::proxy::matcher::Matcher::from_system()),
            read_timeout,
        })
    }

    /// Whether calls to `uri` go through a proxy (and so through reqwest).
    fn proxied(&self, uri: &Uri) -> bool {
        self.proxies.intercept(uri).is_some()
    }

    /// A target at `url`, parsed once: each call to it reuses the parse.
    pub(crate) fn target(&self, url: &str) -> Target {
        match url.parse::<Uri>() {
            Ok(uri) if !self.proxied(&uri) && uri.scheme().is_some() && uri.authority().is_some() => {
                Target::Direct(uri)
            }
            // A URL hyper does not take (or one behind a proxy) goes to reqwest, which either
            // calls it or fails each request as it always did.
            _ => Target::Proxied(url.to_owned()),
        }
    }

    /// Sends `body` (JSON, or nothing for a GET) to `target`: the answer's status and body,
    /// once its head has arrived.
    pub(crate) async fn send(
        &self,
        method: Method,
        target: &Target,
        bearer: Option<&HeaderValue>,
        body: Option<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Answer, GatewayError> {
        let read_timeout = timeout.unwrap_or(self.read_timeout);
        match target {
            Target::Direct(uri) => {
                let mut request = Request::builder().method(method).uri(uri.clone());
                if let Some(headers) = request.headers_mut() {
                    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
                    if body.is_some() {
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    }
                    if let Some(bearer) = bearer {
                        headers.insert(AUTHORIZATION, bearer.clone());
                    }
                }
                let request = request
                    .body(Full::new(body.unwrap_or_default()))
                    .map_err(|e| GatewayError::Unavailable(e.to_string()))?;
                let response = tokio::time::timeout(read_timeout, self.direct.request(request))
                    .await
                    .map_err(|_| GatewayError::Timeout)?
                    .map_err(|e| unavailable(&e))?;
                let (head, body) = response.into_parts();
                Ok(Answer {
                    status: head.status,
                    body: AnswerBody::Direct { body, read_timeout },
                })
            }
            Target::Proxied(url) => {
                let mut request = self.proxied.request(method, url);
                if let Some(timeout) = timeout {
                    request = request.timeout(timeout);
                }
                if let Some(body) = body {
                    request = request.header(CONTENT_TYPE, "application/json").body(body);
                }
                if let Some(bearer) = bearer {
                    request = request.header(AUTHORIZATION, bearer.clone());
                }
                let response = request.send().await.map_err(|e| from_reqwest(&e))?;
                Ok(Answer {
                    status: response.status(),
                    body: AnswerBody::Proxied(response),
                })
            }
        }
    }
}

/// The reqwest client for proxied upstreams and the search backends.
pub(crate) fn reqwest_client(connect_timeout: Duration, read_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .user_agent(AGENT)
        .build()
}

/// Where an upstream endpoint is, as the client calls it.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// Called with hyper directly.
    Direct(Uri),
    /// Called through reqwest (a proxy is configured for it, or hyper cannot parse it).
    Proxied(String),
}

/// An upstream's answer, once its head has arrived.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    body: AnswerBody,
}

enum AnswerBody {
    Direct {
        body: hyper::body::Incoming,
        read_timeout: Duration,
    },
    Proxied(reqwest::Response),
}

impl Answer {
    /// The whole body.
    pub(crate) async fn bytes(self) -> Result<Bytes, GatewayError> {
        use futures_util::TryStreamExt as _;
        let parts = match self.body {
            AnswerBody::Proxied(response) => return response.bytes().await.map_err(|e| from_reqwest(&e)),
            direct => Answer {
                status: self.status,
                body: direct,
            }
            .stream(),
        };
        let mut parts = std::pin::pin!(parts);
        // Most answers arrive in one part: it is kept as it is, not copied.
        let Some(first) = parts.try_next().await? else {
            return Ok(Bytes::new());
        };
        let Some(second) = parts.try_next().await? else {
            return Ok(first);
        };
        let mut whole = bytes::BytesMut::with_capacity(first.len() + second.len());
        whole.extend_from_slice(&first);
        whole.extend_from_slice(&second);
        while let Some(part) = parts.try_next().await? {
            whole.extend_from_slice(&part);
        }
        Ok(whole.freeze())
    }

    /// The body as text (for an error's message), or nothing if it cannot be read.
    pub(crate) async fn text(self) -> String {
        self.bytes()
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// The body's parts as they arrive; a read that waits longer than the read timeout ends it
    /// with [`GatewayError::Timeout`].
    pub(crate) fn stream(self) -> impl Stream<Item = Result<Bytes, GatewayError>> + Send + 'static + use<> {
        use futures_util::TryStreamExt as _;
        use futures_util::future::Either;
        match self.body {
            AnswerBody::Proxied(response) => Either::Left(response.bytes_stream().map_err(|e| from_reqwest(&e))),
            AnswerBody::Direct { body, read_timeout } => {
                Either::Right(futures_util::stream::unfold(Some(body), move |body| async move {
                    let mut body = body?;
                    loop {
                        match tokio::time::timeout(read_timeout, body.frame()).await {
                            Err(_) => return Some((Err(GatewayError::Timeout), None)),
                            Ok(None) => return None,
                            Ok(Some(Err(error))) => return Some((Err(unavailable(&error)), None)),
                            Ok(Some(Ok(frame))) => {
                                // Trailers carry nothing an OpenAI-compatible answer uses.
                                if let Ok(data) = frame.into_data()
                                    && !data.is_empty()
                                {
                                    return Some((Ok(data), Some(body)));
                                }
                            }
                        }
                    }
                }))
            }
        }
    }
}

/// An error and its causes in one line ("connection refused" is in a cause). Upstream keys
/// travel in a header, never in the URL, so no secret is in it. A timed-out connect is a timeout.
fn unavailable(error: &(dyn std::error::Error + 'static)) -> GatewayError {
    let mut message = error.to_string();
    let mut source = error.source();
    let mut timed_out = false;
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        if cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            timed_out = true;
        }
        source = cause.source();
    }
    if timed_out {
        GatewayError::Timeout
    } else {
        GatewayError::Unavailable(message)
    }
}

pub(crate) fn from_reqwest(error: &reqwest::Error) -> GatewayError {
    if error.is_timeout() {
        GatewayError::Timeout
    } else {
        unavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server that answers one request with `parts`, written apart with a pause between
    /// them, then holds the connection open.
    async fn server(parts: Vec<&'static [u8]>, pause: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = vec![0u8; 4096];
            let _ = socket.read(&mut request).await;
            for part in parts {
                let _ = socket.write_all(part).await;
                let _ = socket.flush().await;
                tokio::time::sleep(pause).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        format!("http://{addr}/v1/chat/completions")
    }

    fn client(read_timeout: Duration) -> UpstreamClient {
        UpstreamClient::new(Duration::from_secs(2), read_timeout).expect("client")
    }

    #[tokio::test]
    async fn a_body_in_several_parts_is_read_whole() {
        let url = server(
            vec![
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                b"5\r\n{\"a\":\r\n",
                b"3\r\n 1}\r\n0\r\n\r\n",
            ],
            Duration::from_millis(20),
        )
        .await;
        let client = client(Duration::from_secs(5));
        let target = client.target(&url);
        assert!(matches!(target, Target::Direct(_)));
        let answer = client
            .send(Method::POST, &target, None, Some(Bytes::from_static(b"{}")), None)
            .await
            .expect("answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.bytes().await.expect("body"), Bytes::from_static(b"{\"a\": 1}"));
    }

    #[tokio::test]
    async fn a_read_that_waits_too_long_ends_the_stream_with_a_timeout() {
        let url = server(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"],
            Duration::ZERO,
        )
        .await;
        let client = client(Duration::from_millis(200));
        let target = client.target(&url);
        let answer = client
            .send(Method::POST, &target, None, Some(Bytes::new()), None)
            .await
            .expect("head");
        let parts: Vec<_> = answer.stream().collect().await;
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(matches!(&parts[0], Ok(data) if data.as_ref() == b"data: "));
        assert!(matches!(parts[1], Err(GatewayError::Timeout)));
    }

    #[tokio::test]
    async fn an_answer_whose_head_never_comes_times_out() {
        let url = server(vec![], Duration::ZERO).await;
        let client = client(Duration::from_millis(200));
        let target = client.target(&url);
        let answer = client.send(Method::POST, &target, None, Some(Bytes::new()), None).await;
        assert!(matches!(answer, Err(GatewayError::Timeout)), "{:?}", answer.err());
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable_and_says_why() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let client = client(Duration::from_secs(1));
        let target = client.target(&format!("http://{addr}/v1/models"));
        let answer = client.send(Method::GET, &target, None, None, None).await;
        match answer {
            Err(GatewayError::Unavailable(message)) => {
                assert!(message.to_lowercase().contains("refused"), "{message}");
            }
            other => panic!("expected unavailable, got {:?}", other.err()),
        }
    }

    #[test]
    fn a_url_hyper_does_not_take_goes_to_reqwest() {
        let client = client(Duration::from_secs(1));
        assert!(matches!(client.target("not a url"), Target::Proxied(_)));
        assert!(matches!(client.target("/relative/path"), Target::Proxied(_)));
    }
}
