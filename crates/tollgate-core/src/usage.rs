//! Usage recording with group commit.
//!
//! Every billable request hands its [`UsageRecord`] to the [`UsageRecorder`] and waits until it
//! is durable before sending its last byte. One background task drains whatever has queued
//! while the previous transaction committed and writes it all in one transaction, so under
//! load many requests share one commit (one fsync) and no request updates a hot counter row.
//! The spend entries a batch writes go to the store's spend journal; after answering a batch,
//! the task folds the journal into the ledger once enough has gathered.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tollgate_domain::{Clock, Ticks};
use tollgate_store::{Charge, Store, StoreError};

/// Most records written in one transaction.
const MAX_BATCH: usize = 512;
/// Attempts for a batch whose database was unavailable.
const ATTEMPTS: u32 = 3;
/// Spend entries journaled before the journal is folded into the ledger. More amortises each
/// team's part of the ledger over more entries (at a thousand teams, 8,192 entries write
/// each team's leaf once for about eight of its spends); fewer keeps the journal, which reads
/// by team scan whole, small.
const FOLD_SPENDS_AT: u64 = 8_192;

/// Why usage could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UsageError {
    /// The write failed; the request must not be reported as complete.
    #[error("usage could not be stored: {message}")]
    Store {
        /// What the store said.
        message: Arc<str>,
        /// Whether the database was unavailable (rather than refusing this write).
        retryable: bool,
    },
    /// The recorder has shut down.
    #[error("usage recorder stopped")]
    Stopped,
}

struct Job {
    charge: Charge,
    done: oneshot::Sender<Result<(), UsageError>>,
}

/// A handle to the group-commit writer. Cheap to clone.
#[derive(Clone)]
pub struct UsageRecorder {
    jobs: mpsc::Sender<Job>,
}

impl UsageRecorder {
    /// Starts the writer task. It ends, after writing everything queued, once every handle is
    /// dropped; await the returned handle at shutdown. Spends beyond a team's credit go to its
    /// invoice up to its spending limit, whose default maximum is `default_hard_limit`.
    pub fn start(store: Arc<dyn Store>, clock: Arc<dyn Clock>, default_hard_limit: Ticks) -> (Self, JoinHandle<()>) {
        Self::start_folding_at(store, clock, default_hard_limit, FOLD_SPENDS_AT)
    }

    /// [`UsageRecorder::start`], folding the spend journal into the ledger once `fold_spends_at`
    /// spend entries have gathered instead of the default.
    pub fn start_folding_at(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        default_hard_limit: Ticks,
        fold_spends_at: u64,
    ) -> (Self, JoinHandle<()>) {
        let (jobs, receiver) = mpsc::channel(8192);
        let writer = Writer {
            fold_spends_at,
            store,
            clock,
            default_hard_limit,
        };
        let task = tokio::spawn(run(writer, receiver));
        (Self { jobs }, task)
    }

    /// Stores `charge` (a usage record, its prices, and the lease its spend draws on) durably;
    /// returns once it is committed.
    pub async fn record(&self, charge: Charge) -> Result<(), UsageError> {
        let (done, committed) = oneshot::channel();
        self.jobs
            .send(Job { charge, done })
            .await
            .map_err(|_| UsageError::Stopped)?;
        committed.await.map_err(|_| UsageError::Stopped)?
    }
}

struct Writer {
    fold_spends_at: u64,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    default_hard_limit: Ticks,
}

async fn run(writer: Writer, mut receiver: mpsc::Receiver<Job>) {
    // What an earlier process journaled and did not fold.
    let mut fold_at = fold_spends(&writer, 0, writer.fold_spends_at).await;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Let the tasks already due to run go first: on a busy node many are requests about to
        // settle, and they join this commit instead of each waiting for one of their own.
        tokio::task::yield_now().await;
        while batch.len() < MAX_BATCH {
            let Ok(job) = receiver.try_recv() else { break };
            batch.push(job);
        }
        let records: Vec<Charge> = batch.iter().map(|job| job.charge.clone()).collect();
        match write_with_retry(&writer, &records).await {
            Ok(()) => {
                tracing::debug!(records = records.len(), "usage batch committed");
                for job in batch.drain(..) {
                    // The requester may have gone away; then nobody is waiting for the answer.
                    let _ = job.done.send(Ok(()));
                }
                // After the answers, so no request waits for it; the next batch may.
                fold_at = fold_spends(&writer, fold_at, fold_at).await;
            }
            // One bad record must not fail the requests it happened to share a commit with:
            // write them one by one, so only the bad one fails. (Not when the database is
            // down: then every single write would fail too.)
            Err(UsageError::Store { retryable: false, .. }) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let result = write_with_retry(&writer, std::slice::from_ref(&job.charge)).await;
                    if let Err(error) = &result {
                        tracing::error!(error = %error, request.id = %job.charge.record.request_id, "usage record could not be stored");
                    }
                    let _ = job.done.send(result);
                }
            }
            Err(error) => {
                tracing::error!(error = %error, records = records.len(), "usage batch could not be stored");
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Folds the store's spend journal into its ledger once at least `at_least` spend entries
/// wait ([`tollgate_store::UsageStore::fold_spends`]), and answers how many entries the next
/// fold waits for, `fold_at` being the current threshold. A failure is logged, not returned:
/// the entries stay in the journal, where every read sees them, and the fold is tried again
/// once the journal has doubled, not after every batch: a fold that cannot succeed (a spend of
/// a team that does not exist) would otherwise stall every batch with a whole journal's work,
/// undone. A fold that moved entries brings the threshold back.
async fn fold_spends(writer: &Writer, at_least: u64, fold_at: u64) -> u64 {
    match writer.store.fold_spends(at_least).await {
        // Not due yet, or another node's fold took them.
        Ok(0) => fold_at,
        Ok(moved) => {
            tracing::debug!(entries = moved, "spend journal folded into the ledger");
            writer.fold_spends_at
        }
        // Written behind the application's back: it stays until an operator removes it.
        Err(error @ StoreError::Corrupt(_)) => {
            tracing::error!(
                error = %error,
                "the spend journal could not be folded (a `spend_journal` row whose team is not in `teams` must be \
                 removed); will retry once it has doubled"
            );
            fold_at.saturating_mul(2)
        }
        Err(error) => {
            tracing::warn!(error = %error, "the spend journal could not be folded; will retry once it has doubled");
            fold_at.saturating_mul(2)
        }
    }
}

async fn write_with_retry(writer: &Writer, charges: &[Charge]) -> Result<(), UsageError> {
    let mut attempt = 1;
    loop {
        let at = writer.clock.now();
        match writer
            .store
            .insert_usage_batch(charges, at, writer.default_hard_limit)
            .await
        {
            Ok(()) => return Ok(()),
            // Inserts are idempotent on the request id, so a retry cannot double-count.
            Err(StoreError::Unavailable(_)) if attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            Err(error) => {
                let retryable = matches!(error, StoreError::Unavailable(_));
                return Err(UsageError::Store {
                    message: error.to_string().into(),
                    retryable,
                });
            }
        }
    }
}
