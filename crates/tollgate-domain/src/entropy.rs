//! Where randomness comes from: secrets (keys, tokens, TOTP seeds, recovery codes, nonces) are
//! drawn from an injected [`Entropy`], beside the injected [`crate::Clock`], so tests can pin it.
//! [`OsEntropy`] is the operating system's generator, the one place production reads it for
//! secrets; [`ThreadEntropy`] is a generator per thread seeded from it, for values drawn on every
//! request (nonces); [`SeededEntropy`] repeats the same draws for the same seed (tests only: it
//! is no secret).

use std::sync::Mutex;

use rand::{CryptoRng, RngCore, SeedableRng as _};

/// A source of random bytes.
pub trait Entropy: Send + Sync + 'static {
    /// Fills `dest` with random bytes.
    fn fill_bytes(&self, dest: &mut [u8]);
}

/// The operating system's cryptographic generator.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn fill_bytes(&self, dest: &mut [u8]) {
        rand::rngs::OsRng.fill_bytes(dest);
    }
}

/// The calling thread's cryptographic generator, seeded from the operating system's and reseeded
/// from it as it goes (`rand`'s `ThreadRng`: ChaCha12, reseeded every 64 KiB drawn): no system
/// call per draw. For values drawn on every request, such as the nonce sealing a request's kept
/// bodies, where a `getrandom` each would cost more than the draw; secrets a person holds (keys,
/// tokens, seeds) come from [`OsEntropy`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ThreadEntropy;

impl Entropy for ThreadEntropy {
    fn fill_bytes(&self, dest: &mut [u8]) {
        rand::thread_rng().fill_bytes(dest);
    }
}

/// A generator that repeats its draws for a seed; for tests.
#[derive(Debug)]
pub struct SeededEntropy(Mutex<rand::rngs::StdRng>);

impl SeededEntropy {
    /// Draws that repeat for `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl Entropy for SeededEntropy {
    fn fill_bytes(&self, dest: &mut [u8]) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fill_bytes(dest);
    }
}

/// An [`Entropy`] as a `rand` generator, for the functions that take one.
pub struct EntropyRng<'a>(pub &'a dyn Entropy);

impl RngCore for EntropyRng<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut bytes = [0_u8; 4];
        self.0.fill_bytes(&mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn next_u64(&mut self) -> u64 {
        let mut bytes = [0_u8; 8];
        self.0.fill_bytes(&mut bytes);
        u64::from_le_bytes(bytes)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

/// The generator behind it is cryptographic in production ([`OsEntropy`]); [`SeededEntropy`]
/// is for tests.
impl CryptoRng for EntropyRng<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_draws_repeat_and_os_draws_differ() {
        let draw = |entropy: &dyn Entropy| {
            let mut bytes = [0_u8; 16];
            entropy.fill_bytes(&mut bytes);
            bytes
        };
        assert_eq!(draw(&SeededEntropy::new(7)), draw(&SeededEntropy::new(7)));
        assert_ne!(draw(&SeededEntropy::new(7)), draw(&SeededEntropy::new(8)));
        assert_ne!(draw(&OsEntropy), draw(&OsEntropy));
        assert_ne!(draw(&ThreadEntropy), draw(&ThreadEntropy));
        let seeded = SeededEntropy::new(1);
        assert_ne!(EntropyRng(&seeded).next_u64(), EntropyRng(&seeded).next_u64());
    }
}
