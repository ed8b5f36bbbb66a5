//! Password hashing (argon2id), bounded: each hash takes ~19 MiB and tens of milliseconds of a
//! core, so unbounded concurrent sign-ins could exhaust memory (250 at once took a node from
//! 0.9 to 5.5 GB). At most `workers` hashes run at once (one thread per core by default), at
//! most `queue` more wait for a turn (32 per core: a second or so at worst), and anything beyond
//! is refused at once with [`HashingError::Busy`] (a 503 with `Retry-After` at the edge): never
//! an unbounded queue.
//!
//! The hasher itself is a trait so tests can count and hold hashes.

use std::sync::Arc;

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Hashes and verifies passwords (blocking work: called off the async runtime).
pub trait PasswordHasher: Send + Sync + 'static {
    /// A PHC string for `password`, with a fresh salt.
    fn hash(&self, password: &str) -> anyhow::Result<String>;
    /// Whether `password` matches the PHC string `phc`.
    fn verify(&self, password: &str, phc: &str) -> anyhow::Result<bool>;
}

/// argon2id with the crate's defaults (OWASP's m=19 MiB, t=2, p=1).
///
/// Each thread hashes in one block of memory of its own, allocated once and reused: allocating
/// 19 MiB per hash let the C allocator keep dozens of such blocks after a burst (+180 MiB for
/// 20 sign-ins, measured by `abuse-bench`), where reuse keeps one per hashing thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct Argon2id;

thread_local! {
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `argon2`'s raw hash of `password` with `salt` into `out`, in this thread's reused memory.
fn hash_into(argon2: &Argon2<'_>, password: &[u8], salt: &[u8], out: &mut [u8]) -> anyhow::Result<()> {
    MEMORY.with_borrow_mut(|blocks| {
        let needed = argon2.params().block_count();
        if blocks.len() < needed {
            blocks.resize(needed, argon2::Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
}

impl PasswordHasher for Argon2id {
    fn hash(&self, password: &str) -> anyhow::Result<String> {
        let argon2 = Argon2::default();
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let mut salt_bytes = [0_u8; 64];
        let salt_bytes = salt
            .as_salt()
            .decode_b64(&mut salt_bytes)
            .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let mut out = [0_u8; Params::DEFAULT_OUTPUT_LEN];
        hash_into(&argon2, password.as_bytes(), salt_bytes, &mut out)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::default().into()),
            params: argon2::password_hash::ParamsString::try_from(argon2.params())
                .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
            salt: Some(salt.as_salt()),
            hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))?),
        };
        Ok(phc.to_string())
    }

    fn verify(&self, password: &str, phc: &str) -> anyhow::Result<bool> {
        let parsed = PasswordHash::new(phc).map_err(|e| anyhow::anyhow!("stored password hash: {e}"))?;
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            anyhow::bail!("stored password hash has no salt or hash");
        };
        let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| anyhow::anyhow!("stored hash: {e}"))?;
        let version = parsed
            .version
            .map(Version::try_from)
            .transpose()
            .map_err(|e| anyhow::anyhow!("stored hash: {e}"))?
            .unwrap_or_default();
        // (Carries the output length from the stored hash.)
        let params = Params::try_from(&parsed).map_err(|e| anyhow::anyhow!("stored hash params: {e}"))?;
        let argon2 = Argon2::new(algorithm, version, params);
        let mut salt_bytes = [0_u8; 64];
        let salt_bytes = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| anyhow::anyhow!("stored hash salt: {e}"))?;
        let mut out = vec![0_u8; expected.len()];
        hash_into(&argon2, password.as_bytes(), salt_bytes, &mut out)?;
        // `Output`'s equality is constant-time.
        Ok(Output::new(&out).map_err(|e| anyhow::anyhow!("argon2 output: {e}"))? == expected)
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

type Job = Box<dyn FnOnce(&dyn PasswordHasher) + Send>;

/// The bounded hashing pool, shared by clones: `workers` threads of its own, fed through a
/// bounded queue. Dedicated threads, rather than the runtime's blocking pool, because each
/// thread keeps the ~19 MiB it hashed with for the next hash: a few dozen pool threads each
/// holding that much after a burst is what let memory run away.
#[derive(Clone)]
pub struct PasswordHashing {
    jobs: tokio::sync::mpsc::Sender<Job>,
}

impl std::fmt::Debug for PasswordHashing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHashing")
            .field("queue_free", &self.jobs.capacity())
            .finish_non_exhaustive()
    }
}

impl PasswordHashing {
    /// A pool of `workers` threads (at least 1) and `queue` waiting hashes (at least 1). The
    /// threads end when the last clone is dropped.
    pub fn new(hasher: Arc<dyn PasswordHasher>, workers: usize, queue: usize) -> Self {
        let (jobs, receiver) = tokio::sync::mpsc::channel::<Job>(queue.max(1));
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        for index in 0..workers.max(1) {
            let (hasher, receiver) = (Arc::clone(&hasher), Arc::clone(&receiver));
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{index}"))
                .spawn(move || {
                    loop {
                        // One idle worker waits on the queue at a time; the others wait for it.
                        let job = receiver
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .blocking_recv();
                        match job {
                            Some(job) => job(&*hasher),
                            None => break,
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a password hashing thread");
            }
        }
        Self { jobs }
    }

    /// argon2id with one worker per core and a queue of 32 per core.
    #[must_use]
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self::new(Arc::new(Argon2id), cores, 32 * cores)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn PasswordHasher) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, HashingError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let span = tracing::Span::current();
        let job: Job = Box::new(move |hasher| {
            let _entered = span.enter();
            // The caller may have gone (a cancelled request): the result is then dropped.
            let _ = done.send(work(hasher));
        });
        self.jobs.try_send(job).map_err(|error| match error {
            tokio::sync::mpsc::error::TrySendError::Full(_) => HashingError::Busy,
            tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                HashingError::Failed(anyhow::anyhow!("the password hashing threads are gone"))
            }
        })?;
        result
            .await
            .map_err(|_| anyhow::anyhow!("a password hashing thread failed"))?
            .map_err(HashingError::Failed)
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

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    #[test]
    fn hashes_are_standard_phc_argon2id_both_ways() {
        let ours = Argon2id.hash("correct horse battery staple").unwrap();
        assert!(ours.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{ours}");
        // The argon2 crate's own verifier accepts ours, and ours accepts the crate's.
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse battery staple", &parsed)
                .is_ok()
        );
        let theirs = Argon2::default()
            .hash_password(b"hunter2 hunter2", &SaltString::generate(&mut rand::rngs::OsRng))
            .unwrap()
            .to_string();
        assert!(Argon2id.verify("hunter2 hunter2", &theirs).unwrap());
        assert!(!Argon2id.verify("hunter3 hunter3", &theirs).unwrap());
        assert!(!Argon2id.verify("wrong", &ours).unwrap());
        assert!(Argon2id.verify("x", "not a hash").is_err());
    }
}
