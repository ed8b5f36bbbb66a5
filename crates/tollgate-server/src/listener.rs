//! The public listener's accept loop: HTTP/1.1 connections served by hyper with limits that keep
//! slow or numerous clients from starving the others.
//!
//! - A request's headers must arrive within `header_read_timeout` of the connection being ready
//!   for one (so a keep-alive connection left idle that long is closed too); a slowloris client
//!   trickling header bytes is cut off.
//! - At most `max` connections are open; beyond it a new connection is closed at once (the
//!   accepted socket is dropped), so file descriptors stay available for `/healthz` and the
//!   clients already in.
//! - At most `max_per_client` are open from one client address, except from trusted proxies
//!   (whose clients all share the proxy's address).
//!
//! Shutdown stops accepting, lets in-flight requests finish, and closes idle connections.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections in all.
    pub max: usize,
    /// Open connections from one client address.
    pub max_per_client: usize,
    /// Time for a request's headers to arrive (and for an idle keep-alive connection to live).
    pub header_read_timeout: Duration,
    /// Peers exempt from the per-client limit (trusted proxies).
    pub exempt: Vec<ipnet::IpNet>,
}

impl ConnectionLimits {
    /// No limits to speak of: the operator's listener, on a private address.
    #[must_use]
    pub fn operator() -> Self {
        Self {
            max: 64,
            max_per_client: 64,
            header_read_timeout: Duration::from_secs(10),
            exempt: Vec::new(),
        }
    }
}

/// Connections open per client address.
#[derive(Debug, Default, Clone)]
struct PerClient {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One client connection counted; uncounted when dropped.
struct ClientSlot {
    per_client: PerClient,
    ip: IpAddr,
}

impl PerClient {
    fn acquire(&self, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            per_client: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.per_client.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The client address as counted: IPv6 clients by their /64, like the sign-in throttle.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
        IpAddr::V4(_) => ip,
    }
}

/// Raises this process's open-file limit to its hard limit (so `max` connections fit), and
/// returns the connection cap that fits under it, leaving room for the database, upstreams
/// and files.
pub fn fit_open_files(max: usize) -> usize {
    const RESERVED: u64 = 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let fits = usize::try_from(limit.saturating_sub(RESERVED).max(16)).unwrap_or(usize::MAX);
            if fits < max {
                tracing::warn!(
                    open_files = limit,
                    connections = fits,
                    "the open-file limit is below connections.max; fewer connections are accepted"
                );
            }
            max.min(fits)
        }
        Err(error) => {
            tracing::debug!(%error, "cannot read or raise the open-file limit");
            max
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` resolves; then lets in-flight
/// requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: impl Future<Output = ()> + Send,
    grace: Duration,
) {
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Semaphore::new(limits.max));
    let per_client = PerClient::default();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or the peer gave up before we accepted: wait a
                    // moment instead of spinning.
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = Arc::clone(&open).try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let exempt = limits.exempt.iter().any(|net| net.contains(&remote.ip()));
        let slot = if exempt {
            None
        } else {
            match per_client.acquire(client_key(remote.ip()), limits.max_per_client) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!("per-client connection limit reached; closing a new connection");
                    continue;
                }
            }
        };
        // Small writes (SSE chunks) go out at once instead of waiting for Nagle's algorithm.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let service = router
            .clone()
            .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(remote));
                request
            });
        let connection = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(slot);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "in-flight requests did not finish in time; stopping anyway");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_counted_by_address_and_ipv6_by_64() {
        let per_client = PerClient::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = per_client.acquire(client_key(a), 2).unwrap();
        let _second = per_client.acquire(client_key(a), 2).unwrap();
        assert!(per_client.acquire(client_key(a), 2).is_none());
        drop(first);
        assert!(per_client.acquire(client_key(a), 2).is_some());
        let v6: IpAddr = "2001:db8:1:2::5".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(client_key(v6), client_key(other));
    }
}
