//! A model's upstreams: several servers with weights, a concurrency cap each, passive health
//! (consecutive failures eject one for a while), and failover.
//!
//! A request takes a [`Slot`] on one upstream — chosen by smooth weighted round robin among
//! those healthy and under their cap (weight 0: a backup, used only when no weighted one can
//! be) — and holds it until its answer is relayed. [`Pool::call`] fails over to another upstream
//! on a connect error or a 5xx, which come before any byte reached the client; a timeout or an
//! answer already under way is never retried (the first upstream may still be generating, and
//! would be charged twice). An ejected upstream is passed over while another can serve; when
//! none can, the one whose ejection ends first is tried all the same: ejection orders the
//! choice, it never refuses all traffic.
//!
//! When every upstream is at its cap, a request either is refused at once
//! ([`GatewayError::AtCapacity`], a 429) or, with a queue configured, waits for a slot to free
//! up: at most so many waiting, each at most so long, woken in turn as slots are released.
//!
//! Time comes from the injected [`Clock`], so tests move it to end an ejection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::Stream;
use tollgate_domain::{Clock, Timestamp};

use crate::upstream::{GatewayError, Upstream};

/// When an upstream is ejected, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    /// Consecutive failures that eject an upstream (0: never).
    pub eject_after: u32,
    /// How long an ejected upstream is passed over.
    pub eject_for: chrono::Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            eject_after: 3,
            eject_for: chrono::Duration::seconds(30),
        }
    }
}

/// How requests wait when every upstream is at its cap.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueSettings {
    /// The most requests waiting at once (0: none wait; a request over the caps is refused).
    pub max_waiting: u32,
    /// The longest one waits before it is refused.
    pub wait: std::time::Duration,
}

/// One upstream serving a model.
#[derive(Debug)]
pub struct Backend {
    /// The server.
    pub upstream: Arc<Upstream>,
    /// Its name for the model.
    pub model: String,
    /// Its share of requests (0: a backup).
    pub weight: u32,
    /// The most requests it is sent at once (`None`: no cap).
    pub max_concurrency: Option<u32>,
}

#[derive(Debug, Default, Clone)]
struct State {
    in_flight: u32,
    failures: u32,
    ejected_until: Option<Timestamp>,
    current: i64,
}

/// What happened to an upstream, for the caller's metrics and logs.
#[derive(Debug)]
pub enum UpstreamEvent<'a> {
    /// A call failed (and, if another upstream can serve, was retried there).
    Failed {
        /// The upstream's name.
        upstream: &'a str,
        /// How.
        error: &'a GatewayError,
    },
    /// The upstream failed too often in a row and is passed over for a while.
    Ejected {
        /// The upstream's name.
        upstream: &'a str,
    },
    /// A request began waiting for a slot (every upstream at its cap).
    Queued,
    /// A request stopped waiting (it got a slot, or gave up).
    Unqueued,
}

/// A model's upstreams.
pub struct Pool {
    backends: Vec<Backend>,
    states: Mutex<Vec<State>>,
    health: HealthSettings,
    clock: Arc<dyn Clock>,
    queue: QueueSettings,
    waiting: AtomicU32,
    freed: tokio::sync::Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("backends", &self.backends)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// A request's hold on one upstream, until it is dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    index: usize,
}

impl Slot {
    /// The upstream.
    #[must_use]
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.pool.backends[self.index].upstream
    }

    /// The upstream's name for the model.
    #[must_use]
    pub fn model(&self) -> &str {
        &self.pool.backends[self.index].model
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        {
            let mut states = self.pool.states.lock().unwrap_or_else(PoisonError::into_inner);
            states[self.index].in_flight = states[self.index].in_flight.saturating_sub(1);
        }
        // The next waiting request, if any, tries again.
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// A pool of `backends` (at least one).
    #[must_use]
    pub fn new(backends: Vec<Backend>, health: HealthSettings, clock: Arc<dyn Clock>) -> Self {
        let states = Mutex::new(vec![State::default(); backends.len()]);
        Self {
            backends,
            states,
            health,
            clock,
            queue: QueueSettings::default(),
            waiting: AtomicU32::new(0),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Lets requests wait for a slot when every upstream is at its cap, as `queue` says.
    #[must_use]
    pub fn with_queue(mut self, queue: QueueSettings) -> Self {
        self.queue = queue;
        self
    }

    /// A slot for a new request: at once if an upstream is under its cap, else after waiting in
    /// the queue (if there is room in it) until one frees up or the wait is over.
    async fn first_slot(self: &Arc<Self>, observe: &impl Fn(UpstreamEvent<'_>)) -> Option<Slot> {
        if let Some(slot) = self.acquire(&[]) {
            return Some(slot);
        }
        let max = self.queue.max_waiting;
        let entered = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_ok();
        if !entered {
            return None;
        }
        observe(UpstreamEvent::Queued);
        let deadline = tokio::time::Instant::now() + self.queue.wait;
        let slot = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.acquire(&[]) {
                break Some(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                break self.acquire(&[]);
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        observe(UpstreamEvent::Unqueued);
        if slot.is_none() {
            // Pass the wake-up on: this one gave up, another may take the slot.
            self.freed.notify_one();
        }
        slot
    }

    /// Its upstreams.
    #[must_use]
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// A slot on the best upstream not in `tried`; `None` when every other one is at its cap.
    fn acquire(self: &Arc<Self>, tried: &[usize]) -> Option<Slot> {
        let now = self.clock.now();
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let open = |index: usize, state: &State| {
            !tried.contains(&index)
                && self.backends[index]
                    .max_concurrency
                    .is_none_or(|cap| state.in_flight < cap)
        };
        let healthy = |state: &State| state.ejected_until.is_none_or(|until| until <= now);
        // Weighted and healthy: smooth weighted round robin (nginx's), so shares are exact
        // over any run of requests and no upstream gets a burst.
        let weighted: Vec<usize> = (0..self.backends.len())
            .filter(|&i| self.backends[i].weight > 0 && open(i, &states[i]) && healthy(&states[i]))
            .collect();
        let chosen = if weighted.is_empty() {
            // A healthy backup, else the ejected one whose ejection ends first.
            (0..self.backends.len())
                .find(|&i| open(i, &states[i]) && healthy(&states[i]))
                .or_else(|| {
                    (0..self.backends.len())
                        .filter(|&i| open(i, &states[i]))
                        .min_by_key(|&i| states[i].ejected_until)
                })
        } else {
            let total: i64 = weighted.iter().map(|&i| i64::from(self.backends[i].weight)).sum();
            for &i in &weighted {
                states[i].current += i64::from(self.backends[i].weight);
            }
            let best = weighted
                .iter()
                .copied()
                .max_by_key(|&i| (states[i].current, std::cmp::Reverse(i)));
            if let Some(best) = best {
                states[best].current -= total;
            }
            best
        }?;
        states[chosen].in_flight += 1;
        Some(Slot {
            pool: Arc::clone(self),
            index: chosen,
        })
    }

    /// Notes how a call on `slot` went; true when this failure ejected it.
    fn record(&self, slot: &Slot, ok: bool) -> bool {
        self.record_at(slot.index, ok)
    }

    fn record_at(&self, index: usize, ok: bool) -> bool {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let state = &mut states[index];
        if ok {
            state.failures = 0;
            return false;
        }
        state.failures += 1;
        if self.health.eject_after > 0 && state.failures >= self.health.eject_after {
            state.failures = 0;
            state.ejected_until = Some(self.clock.now() + self.health.eject_for);
            return true;
        }
        false
    }

    /// Probes every upstream once (the active health check): one that answers is healthy
    /// again at once (an ejection ends early); one that does not counts a failure, as a failed
    /// call does, and is ejected after as many in a row. `observe` hears of failures and
    /// ejections.
    pub async fn probe(&self, timeout: std::time::Duration, observe: impl Fn(UpstreamEvent<'_>)) {
        for (index, backend) in self.backends.iter().enumerate() {
            let upstream = backend.upstream.name();
            match backend.upstream.probe(timeout).await {
                Ok(()) => {
                    let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
                    let state = &mut states[index];
                    if state.ejected_until.take().is_some() {
                        tracing::info!(upstream, "upstream answered its probe: back in service");
                    }
                    state.failures = 0;
                }
                Err(error) => {
                    observe(UpstreamEvent::Failed {
                        upstream,
                        error: &error,
                    });
                    if self.record_at(index, false) {
                        tracing::warn!(upstream, %error, "upstream ejected after failed probes");
                        observe(UpstreamEvent::Ejected { upstream });
                    }
                }
            }
        }
    }

    /// Calls `call` with an upstream and its model name, failing over to another upstream on a
    /// connect error or a 5xx; `observe` hears of every failure and ejection. The answer comes
    /// with its slot, to hold while the answer is relayed.
    pub async fn call<T, F, Fut>(
        self: &Arc<Self>,
        mut call: F,
        observe: impl Fn(UpstreamEvent<'_>),
    ) -> Result<(T, Slot), GatewayError>
    where
        F: FnMut(Arc<Upstream>, String) -> Fut,
        Fut: Future<Output = Result<T, GatewayError>>,
    {
        let mut tried = Vec::with_capacity(self.backends.len());
        let mut last_error = None;
        loop {
            let slot = if tried.is_empty() {
                self.first_slot(&observe).await
            } else {
                self.acquire(&tried)
            };
            let Some(slot) = slot else {
                return Err(last_error.unwrap_or(GatewayError::AtCapacity));
            };
            tried.push(slot.index);
            match call(Arc::clone(slot.upstream()), slot.model().to_owned()).await {
                Ok(answer) => {
                    self.record(&slot, true);
                    return Ok((answer, slot));
                }
                Err(error) => {
                    let upstream = slot.upstream().name();
                    observe(UpstreamEvent::Failed {
                        upstream,
                        error: &error,
                    });
                    let client_error = matches!(&error, GatewayError::Status { status, .. } if *status < 500);
                    // A client's mistake says nothing of the upstream's health.
                    if !client_error && self.record(&slot, false) {
                        tracing::warn!(upstream, "upstream ejected after consecutive failures");
                        observe(UpstreamEvent::Ejected { upstream });
                    }
                    let retry = matches!(&error, GatewayError::Unavailable(_))
                        || matches!(&error, GatewayError::Status { status, .. } if *status >= 500);
                    if !retry || tried.len() == self.backends.len() {
                        return Err(error);
                    }
                    tracing::warn!(upstream, %error, "upstream failed; trying another");
                    last_error = Some(error);
                }
            }
        }
    }
}

/// A stream that holds its upstream slot until it is dropped.
pub struct Held<S> {
    stream: Pin<Box<S>>,
    _slot: Slot,
}

impl<S> Held<S> {
    /// `stream`, holding `slot`.
    pub fn new(stream: S, slot: Slot) -> Self {
        Self {
            stream: Box::pin(stream),
            _slot: slot,
        }
    }
}

impl<S: Stream> Stream for Held<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[(u32, Option<u32>)]) -> (Arc<Pool>, Arc<tollgate_domain::ManualClock>) {
        let clock = Arc::new(tollgate_domain::ManualClock::new(
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        ));
        let client =
            crate::upstream::UpstreamClient::new(std::time::Duration::from_secs(1), std::time::Duration::from_secs(5))
                .expect("client");
        let backends = weights
            .iter()
            .enumerate()
            .map(|(i, &(weight, max_concurrency))| Backend {
                upstream: Arc::new(Upstream::new(
                    format!("u{i}"),
                    "http://127.0.0.1:9",
                    None,
                    client.clone(),
                )),
                model: format!("m{i}"),
                weight,
                max_concurrency,
            })
            .collect();
        let clock_dyn: Arc<dyn Clock> = clock.clone();
        (
            Arc::new(Pool::new(backends, HealthSettings::default(), clock_dyn)),
            clock,
        )
    }

    #[test]
    fn weights_share_requests_exactly_and_backups_wait() {
        let (pool, _) = pool(&[(3, None), (1, None), (0, None)]);
        let picks: Vec<usize> = (0..8).map(|_| pool.acquire(&[]).map_or(9, |slot| slot.index)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
        assert!(!picks.contains(&2), "the backup is not used while the others can serve");
        assert_eq!(pool.acquire(&[0, 1]).map(|slot| slot.index), Some(2));
    }

    #[test]
    fn caps_are_held_until_the_slot_is_dropped() {
        let (pool, _) = pool(&[(1, Some(1))]);
        let slot = pool.acquire(&[]);
        assert!(slot.is_some());
        assert!(pool.acquire(&[]).is_none(), "at its cap");
        drop(slot);
        assert!(pool.acquire(&[]).is_some());
    }

    #[test]
    fn failures_eject_for_a_while_but_never_refuse_all() {
        let (pool, clock) = pool(&[(1, None), (1, None)]);
        let first = pool.acquire(&[1]).unwrap_or_else(|| unreachable!());
        assert!(!pool.record(&first, false));
        assert!(!pool.record(&first, false));
        assert!(pool.record(&first, false), "the third failure in a row ejects");
        drop(first);
        for _ in 0..4 {
            assert_eq!(pool.acquire(&[]).map(|slot| slot.index), Some(1));
        }
        // With the other one out of the question, the ejected one serves all the same.
        assert_eq!(pool.acquire(&[1]).map(|slot| slot.index), Some(0));
        clock.advance(chrono::Duration::seconds(31));
        let picks: Vec<usize> = (0..4).map(|_| pool.acquire(&[]).map_or(9, |slot| slot.index)).collect();
        assert!(picks.contains(&0), "back after its ejection: {picks:?}");
    }

    #[tokio::test]
    async fn over_the_caps_a_bounded_queue_waits_for_a_free_slot() {
        let (pool, _) = pool(&[(1, Some(1))]);
        let pool = Arc::new(
            Arc::into_inner(pool)
                .unwrap_or_else(|| unreachable!())
                .with_queue(QueueSettings {
                    max_waiting: 1,
                    wait: std::time::Duration::from_secs(30),
                }),
        );
        let held = pool.acquire(&[]).unwrap_or_else(|| unreachable!());
        let quiet = |_: UpstreamEvent<'_>| {};
        let waiter = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.first_slot(&|_: UpstreamEvent<'_>| {}).await.map(|slot| slot.index) })
        };
        while pool.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(
            pool.first_slot(&quiet).await.is_none(),
            "the queue is full: refused at once"
        );
        drop(held);
        assert_eq!(
            waiter.await.unwrap_or_default(),
            Some(0),
            "the waiter got the freed slot"
        );
    }

    #[tokio::test]
    async fn probes_end_an_ejection_or_eject_a_silent_upstream() {
        // A server answering every request with 200, as a healthy upstream's /models does.
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap_or_else(|_| unreachable!());
        let addr = listener.local_addr().unwrap_or_else(|_| unreachable!());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buffer = [0u8; 1024];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                    .await;
            }
        });
        let clock: Arc<dyn Clock> = Arc::new(tollgate_domain::ManualClock::new(
            chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        ));
        let client =
            crate::upstream::UpstreamClient::new(std::time::Duration::from_secs(1), std::time::Duration::from_secs(5))
                .expect("client");
        let backend = |name: &str, url: &str| Backend {
            upstream: Arc::new(Upstream::new(name.into(), url, None, client.clone())),
            model: "m".into(),
            weight: 1,
            max_concurrency: None,
        };
        let pool = Arc::new(Pool::new(
            vec![
                backend("alive", &format!("http://{addr}/v1")),
                backend("silent", "http://127.0.0.1:9/v1"),
            ],
            HealthSettings {
                eject_after: 2,
                eject_for: chrono::Duration::hours(1),
            },
            clock,
        ));
        // The live one failed its calls and was ejected; its probe brings it back at once.
        assert!(!pool.record_at(0, false));
        assert!(pool.record_at(0, false));
        let timeout = std::time::Duration::from_secs(5);
        let ejected = std::sync::Mutex::new(Vec::new());
        let observe = |event: UpstreamEvent<'_>| {
            if let UpstreamEvent::Ejected { upstream } = event {
                ejected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(upstream.to_owned());
            }
        };
        pool.probe(timeout, observe).await;
        pool.probe(timeout, observe).await;
        let states = pool.states.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(states[0].ejected_until, None, "back in service");
        assert!(states[1].ejected_until.is_some(), "two failed probes eject");
        assert_eq!(*ejected.lock().unwrap_or_else(PoisonError::into_inner), ["silent"]);
    }
}
