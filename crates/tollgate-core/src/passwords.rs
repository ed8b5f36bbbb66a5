//! Password hashing (argon2id), bounded: each hash takes ~19 MiB and tens of milliseconds of a
//! core, so unbounded concurrent sign-ins could exhaust memory (250 at once took a node from
//! 0.9 to 5.5 GB). At most `workers` hashes run at once (one per core by default), at most
//! `queue` more wait for a turn, and anything beyond is refused at once with
//! [`HashingError::Busy`] (a 503 with `Retry-After` at the edge): never an unbounded queue.
//!
//! The hasher itself is a trait so tests can count and hold hashes.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use tokio::sync::Semaphore;

/// Hashes and verifies passwords (blocking work: called off the async runtime).
pub trait PasswordHasher: Send + Sync + 'static {
    /// A PHC string for `password`, with a fresh salt.
    fn hash(&self, password: &str) -> anyhow::Result<String>;
    /// Whether `password` matches the PHC string `phc`.
    fn verify(&self, password: &str, phc: &str) -> anyhow::Result<bool>;
}

/// argon2id with the crate's defaults (OWASP's m=19 MiB, t=2, p=1).
#[derive(Debug, Clone, Copy, Default)]
pub struct Argon2id;

impl PasswordHasher for Argon2id {
    fn hash(&self, password: &str) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Ok(Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
            .to_string())
    }

    fn verify(&self, password: &str, phc: &str) -> anyhow::Result<bool> {
        let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
    }
}

/// Why hashing did not happen.
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    /// Every worker is busy and the queue is full.
    #[error("too many sign-ins at once; try again in a moment")]
    Busy,
    /// The hasher failed (a corrupt stored hash, a panicked task).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// The bounded hashing pool, shared by clones.
#[derive(Clone)]
pub struct PasswordHashing {
    hasher: Arc<dyn PasswordHasher>,
    /// Permits for hashes running or waiting: `workers + queue`.
    admitted: Arc<Semaphore>,
    /// Permits for hashes running.
    workers: Arc<Semaphore>,
}

impl std::fmt::Debug for PasswordHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHashing")
            .field("admitted_available", &self.admitted.available_permits())
            .field("workers_available", &self.workers.available_permits())
            .finish_non_exhaustive()
    }
}

impl PasswordHashing {
    /// A pool of `workers` (at least 1) running hashes and `queue` waiting ones.
    pub fn new(hasher: Arc<dyn PasswordHasher>, workers: usize, queue: usize) -> Self {
        let workers = workers.max(1);
        Self {
            hasher,
            admitted: Arc::new(Semaphore::new(workers + queue)),
            workers: Arc::new(Semaphore::new(workers)),
        }
    }

    /// argon2id with one worker per core and a queue of four per core.
    #[must_use]
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::new(Arc::new(Argon2id), cores, 4 * cores)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn PasswordHasher) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashingError> {
        let _admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| HashingError::Busy)?;
        let worker = Arc::clone(&self.workers)
            .acquire_owned()
            .await
            .map_err(|e| anyhow::anyhow!("hashing pool closed: {e}"))?;
        let hasher = Arc::clone(&self.hasher);
        let span = tracing::Span::current();
        // The permit moves into the blocking task: a cancelled request does not free a worker
        // whose hash is still running.
        Ok(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let _worker = worker;
            work(&*hasher)
        })
        .await
        .map_err(anyhow::Error::from)??)
    }

    /// Hashes `password`.
    pub async fn hash(&self, password: String) -> Result<String, HashingError> {
        self.run(move |hasher| hasher.hash(&password)).await
    }

    /// Whether `password` matches `phc`.
    pub async fn verify(&self, password: String, phc: String) -> Result<bool, HashingError> {
        self.run(move |hasher| hasher.verify(&password, &phc)).await
    }
}
