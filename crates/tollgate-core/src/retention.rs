//! Request and response bodies kept for abuse review (xAI's: kept 30 days, then deleted).
//!
//! Each answered request's bodies are laid out as bytes (compressed with LZ4 when long enough to
//! gain), sealed with a key of their own (derived
//! from the server's secret like the TOTP seal) with the team and request ids bound in, and
//! written by one task in batches. Keeping never delays an answer: a body the writer cannot take
//! (its queue full, the database down) is dropped and counted, never waited for. The housekeeping
//! job deletes what is past the retention. An operator reads one with `tollgate requests show`,
//! which is audited in the team's log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tollgate_domain::entropy::{Entropy, EntropyRng, ThreadEntropy};
use tollgate_domain::mfa::SecretSealer;
use tollgate_domain::{Actor, AuditAction, AuditEvent, Clock, RequestContext, RequestId, TeamId, Timestamp};
use tollgate_store::{RetainedBody, Store, StoreError};

/// Bodies one write takes at most (one statement: at most the store's rows per insert).
const MAX_BATCH: usize = 512;
/// Bodies waiting for the writer at most; past it, new ones are dropped.
const QUEUE: usize = 4 * MAX_BATCH;
/// The most of each body kept; the rest is cut (and said so).
pub const MAX_KEPT_BYTES: usize = 4 << 20;

/// Why bodies could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The row does not open with this server's key.
    #[error("the bodies of request {0} cannot be opened with this server's key")]
    Sealed(RequestId),
    /// A reason is required for reading.
    #[error("say why the bodies are read (an abuse review's reference)")]
    NoReason,
}

/// What is kept of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bodies {
    /// The request body as the client sent it.
    pub request: String,
    /// The answer: a whole one as the model server gave it, a stream as the events the client
    /// got.
    pub response: String,
    /// Whether either was cut at [`MAX_KEPT_BYTES`].
    pub truncated: bool,
}

/// A kept request, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The row's facts.
    pub team_id: TeamId,
    /// The key that made it.
    pub api_key_id: tollgate_domain::ApiKeyId,
    /// Its endpoint.
    pub endpoint: String,
    /// Its model.
    pub model: String,
    /// When.
    pub created_at: Timestamp,
    /// The bodies.
    pub bodies: Bodies,
}

/// What one request leaves to keep.
#[derive(Debug, Clone)]
pub struct ToKeep {
    /// The request.
    pub request_id: RequestId,
    /// Its team.
    pub team_id: TeamId,
    /// Its key.
    pub api_key_id: tollgate_domain::ApiKeyId,
    /// Its endpoint's name.
    pub endpoint: &'static str,
    /// Its model.
    pub model: String,
    /// The request body.
    pub request: bytes::Bytes,
}

/// The body retention service.
#[derive(Clone)]
pub struct Retention {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    sealer: Arc<SecretSealer>,
    entropy: Arc<dyn Entropy>,
    keep_for: chrono::Duration,
    writer: Arc<std::sync::Mutex<BodyWriter>>,
    dropped: Arc<AtomicU64>,
}

/// The writer task and the one way into it; both gone once closed (or when nothing is kept).
#[derive(Default)]
struct BodyWriter {
    sender: Option<mpsc::Sender<RetainedBody>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention")
            .field("keep_for", &self.keep_for)
            .finish_non_exhaustive()
    }
}

/// How kept bodies are laid out before they are sealed: this tag, a flags byte, then the
/// request's length (`u32`, little-endian), the request and the answer, as they were (bytes,
/// not text) — that part LZ4-compressed, its size prepended, when it is long enough to gain.
/// Rows from before this layout hold LZ4 (size prepended) of [`Bodies`] as JSON; their first four
/// bytes, that size, never spell the tag (as a size it reads 828 MB, far past what is kept).
const LAYOUT: &[u8; 4] = b"tgb1";
const TRUNCATED: u8 = 1;
const COMPRESSED: u8 = 2;
/// Shorter than this, LZ4's table costs more than compressing saves.
const COMPRESS_FROM: usize = 2048;

/// `request` and `response` laid out to be sealed.
fn pack(request: &[u8], response: &[u8], truncated: bool) -> Vec<u8> {
    let mut flags = if truncated { TRUNCATED } else { 0 };
    let length = u32::try_from(request.len()).unwrap_or(u32::MAX).to_le_bytes();
    let size = 4 + request.len() + response.len();
    let mut packed = Vec::with_capacity(LAYOUT.len() + 1 + size);
    packed.extend_from_slice(LAYOUT);
    if size >= COMPRESS_FROM {
        flags |= COMPRESSED;
        let mut plain = Vec::with_capacity(size);
        plain.extend_from_slice(&length);
        plain.extend_from_slice(request);
        plain.extend_from_slice(response);
        packed.push(flags);
        packed.extend_from_slice(&lz4_flex::compress_prepend_size(&plain));
    } else {
        packed.push(flags);
        packed.extend_from_slice(&length);
        packed.extend_from_slice(request);
        packed.extend_from_slice(response);
    }
    packed
}

/// What [`pack`] laid out (or a row from before it); `None` when it is not either.
fn unpack(packed: &[u8]) -> Option<Bodies> {
    let Some(rest) = packed.strip_prefix(LAYOUT.as_slice()) else {
        let plain = lz4_flex::decompress_size_prepended(packed).ok()?;
        return serde_json::from_slice(&plain).ok();
    };
    let (&flags, rest) = rest.split_first()?;
    let decompressed;
    let plain = if flags & COMPRESSED == 0 {
        rest
    } else {
        decompressed = lz4_flex::decompress_size_prepended(rest).ok()?;
        &decompressed
    };
    let (length, bodies) = plain.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_le_bytes(*length)).ok()?;
    if length > bodies.len() {
        return None;
    }
    let (request, response) = bodies.split_at(length);
    Some(Bodies {
        request: String::from_utf8_lossy(request).into_owned(),
        response: String::from_utf8_lossy(response).into_owned(),
        truncated: flags & TRUNCATED != 0,
    })
}

fn context(team_id: TeamId, request_id: RequestId) -> Vec<u8> {
    format!("request-bodies|{team_id}|{request_id}").into_bytes()
}

/// Writes what arrives, gathering for `window` after the first (under load one commit, one
/// fsync, per window rather than per few requests); everything left at once when the sender is
/// gone.
async fn write(
    store: Arc<dyn Store>,
    mut pending: mpsc::Receiver<RetainedBody>,
    dropped: Arc<AtomicU64>,
    window: std::time::Duration,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while pending.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let until = tokio::time::Instant::now() + window;
        while batch.len() < MAX_BATCH {
            let room = MAX_BATCH - batch.len();
            let more = pending.recv_many(&mut batch, room);
            match tokio::time::timeout_at(until, more).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if let Err(error) = store.insert_request_bodies(&batch).await {
            dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(%error, bodies = batch.len(), "request bodies could not be kept");
        }
        batch.clear();
    }
}

fn cut(bytes: &[u8]) -> (&[u8], bool) {
    let kept = &bytes[..bytes.len().min(MAX_KEPT_BYTES)];
    (kept, kept.len() < bytes.len())
}

impl Retention {
    /// Bodies sealed with `key`, kept for `keep_for` (zero: none kept, none written), written
    /// a `window` at a time. Its writer runs on the current Tokio runtime until [`Self::close`].
    #[must_use]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        key: &[u8; 32],
        keep_for: chrono::Duration,
        window: std::time::Duration,
    ) -> Self {
        let dropped = Arc::new(AtomicU64::new(0));
        let mut writer = BodyWriter::default();
        if keep_for > chrono::Duration::zero() {
            let (sender, pending) = mpsc::channel(QUEUE);
            let task = write(Arc::clone(&store), pending, Arc::clone(&dropped), window);
            writer.task = Some(tokio::spawn(task));
            writer.sender = Some(sender);
        }
        Self {
            store,
            clock,
            sealer: Arc::new(SecretSealer::new(key)),
            // A nonce per request: from the thread's generator, not a system call each.
            entropy: Arc::new(ThreadEntropy),
            keep_for,
            writer: Arc::new(std::sync::Mutex::new(writer)),
            dropped,
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, BodyWriter> {
        // Two options, each replaced whole: a panic elsewhere cannot leave them half-changed.
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes every body still waiting (without waiting out the window) and stops the writer:
    /// at shutdown, once no request can keep more. Bodies offered after are dropped (counted).
    pub async fn close(&self) {
        let task = {
            let mut writer = self.writer();
            writer.sender = None;
            writer.task.take()
        };
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// How long bodies are kept.
    #[must_use]
    pub fn keep_for(&self) -> chrono::Duration {
        self.keep_for
    }

    /// Bodies dropped so far (the writer's queue full, or the database failing).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Keeps a request's bodies, without waiting: sealed here, written by the writer soon.
    pub fn keep(&self, request: ToKeep, response: &[u8]) {
        if self.keep_for <= chrono::Duration::zero() {
            return;
        }
        let (request_kept, request_cut) = cut(&request.request);
        let (response_kept, response_cut) = cut(response);
        let packed = pack(request_kept, response_kept, request_cut || response_cut);
        let sealed = self.sealer.seal(
            &packed,
            &context(request.team_id, request.request_id),
            &mut EntropyRng(&*self.entropy),
        );
        let row = RetainedBody {
            request_id: request.request_id,
            team_id: request.team_id,
            api_key_id: request.api_key_id,
            endpoint: request.endpoint.to_owned(),
            model: request.model,
            created_at: self.clock.now(),
            sealed,
        };
        let taken = self
            .writer()
            .sender
            .as_ref()
            .is_some_and(|sender| sender.try_send(row).is_ok());
        if !taken {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Opens request `request_id`'s bodies for an abuse review, recording in the team's audit
    /// log who read them and why. `None`: not kept (never, or past the retention).
    pub async fn show(
        &self,
        request_id: RequestId,
        reason: &str,
        actor: Actor,
        request_context: &RequestContext,
    ) -> Result<Option<Shown>, RetentionError> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(RetentionError::NoReason);
        }
        let Some(row) = self.store.request_body(request_id).await? else {
            return Ok(None);
        };
        let packed = self
            .sealer
            .open(&row.sealed, &context(row.team_id, request_id))
            .ok_or(RetentionError::Sealed(request_id))?;
        let bodies = unpack(&packed).ok_or(RetentionError::Sealed(request_id))?;
        let audit = AuditEvent::success(
            self.clock.now(),
            Some(row.team_id),
            actor,
            AuditAction::ReadRequestBodies,
            format!("The bodies of request {request_id} were read for an abuse review: {reason}"),
            Some(format!("request:{request_id}")),
            request_context,
        );
        self.store.insert_audit_event(&audit).await?;
        Ok(Some(Shown {
            team_id: row.team_id,
            api_key_id: row.api_key_id,
            endpoint: row.endpoint,
            model: row.model,
            created_at: row.created_at,
            bodies,
        }))
    }

    /// Deletes what is past the retention (whole partitions where the database has them).
    pub async fn prune(&self) -> Result<u64, StoreError> {
        if self.keep_for <= chrono::Duration::zero() {
            return Ok(0);
        }
        let now = self.clock.now();
        self.store.prune_request_bodies(now - self.keep_for, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_come_back_as_they_were_kept_short_or_long() {
        let long = "{\"messages\":[{\"role\":\"user\",\"content\":\"é\"}]}".repeat(100);
        for (request, response, truncated) in [
            ("{\"model\":\"m\"}", "data: {}\n\n", false),
            (long.as_str(), "{\"choices\":[]}", true),
            ("", "", false),
        ] {
            let packed = pack(request.as_bytes(), response.as_bytes(), truncated);
            assert_eq!(
                packed[4] & COMPRESSED != 0,
                request.len() + response.len() + 4 >= COMPRESS_FROM
            );
            let bodies = unpack(&packed).unwrap();
            assert_eq!(bodies.request, request);
            assert_eq!(bodies.response, response);
            assert_eq!(bodies.truncated, truncated);
        }
    }

    #[test]
    fn a_body_cut_inside_a_character_opens_all_the_same() {
        let bodies = unpack(&pack("é".as_bytes()[..1].as_ref(), b"ok", true)).unwrap();
        assert_eq!(bodies.request, "\u{fffd}");
        assert_eq!(bodies.response, "ok");
    }

    #[test]
    fn rows_kept_before_the_layout_still_open() {
        let before = Bodies {
            request: "{\"model\":\"m\"}".into(),
            response: "{\"id\":\"x\"}".into(),
            truncated: false,
        };
        let legacy = lz4_flex::compress_prepend_size(&serde_json::to_vec(&before).unwrap());
        assert_eq!(unpack(&legacy), Some(before));
    }

    #[test]
    fn what_is_not_kept_bodies_does_not_open() {
        for packed in [
            &b"tgb1"[..],
            b"tgb1\x00\x09\x00\x00\x00ab",
            b"tgb1\x02garbage",
            b"\x05\x00\x00\x00zz",
        ] {
            assert_eq!(unpack(packed), None, "{packed:?}");
        }
    }
}
