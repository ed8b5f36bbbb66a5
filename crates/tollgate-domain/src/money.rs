//! Money. One unit everywhere: USD ticks, 1 tick = 1e-10 USD, in an `i64`. No float ever
//! touches an amount. A price is ticks per token, which is exactly xAI's published price unit
//! ("1e-4 USD per 1M tokens"), so an xAI price list copies over unchanged.

use std::fmt;

use crate::usage::TokenUsage;

/// An amount of USD ticks (1e-10 USD). Arithmetic is checked: an overflow is an error, not a
/// wrap-around.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ticks(i64);

/// Ticks arithmetic that would overflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicksError {
    /// The result does not fit an `i64`.
    #[error("amount overflows")]
    Overflow,
}

impl Ticks {
    /// Zero ticks.
    pub const ZERO: Ticks = Ticks(0);
    /// One US dollar.
    pub const PER_USD: i64 = 10_000_000_000;
    /// One US cent.
    pub const PER_CENT: i64 = 100_000_000;

    /// Whole cents, rounded half away from zero: the one rule by which ticks become the cents
    /// of the billing API (a total is rounded from its exact ticks, never summed from rounded
    /// parts).
    #[must_use]
    pub const fn to_cents_rounded(self) -> i64 {
        let whole = self.0 / Self::PER_CENT;
        let rest = self.0 % Self::PER_CENT;
        if rest.unsigned_abs() * 2 >= Self::PER_CENT.unsigned_abs() {
            whole + self.0.signum()
        } else {
            whole
        }
    }

    /// Wraps a raw tick count.
    #[must_use]
    pub const fn new(ticks: i64) -> Self {
        Self(ticks)
    }

    /// The raw tick count.
    #[must_use]
    pub const fn get(self) -> i64 {
        self.0
    }

    /// `self + other`, or an error on overflow.
    pub fn checked_add(self, other: Ticks) -> Result<Ticks, TicksError> {
        self.0.checked_add(other.0).map(Ticks).ok_or(TicksError::Overflow)
    }

    /// `self - other`, or an error on overflow.
    pub fn checked_sub(self, other: Ticks) -> Result<Ticks, TicksError> {
        self.0.checked_sub(other.0).map(Ticks).ok_or(TicksError::Overflow)
    }

    /// `self * count` (a per-unit price times a number of units), or an error on overflow.
    pub fn checked_mul(self, count: u64) -> Result<Ticks, TicksError> {
        let count = i64::try_from(count).map_err(|_| TicksError::Overflow)?;
        self.0.checked_mul(count).map(Ticks).ok_or(TicksError::Overflow)
    }
}

impl fmt::Display for Ticks {
    /// Exact decimal dollars, e.g. `$0.0000158500`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per_usd = Ticks::PER_USD.unsigned_abs();
        write!(f, "{sign}${}.{:010}", abs / per_usd, abs % per_usd)
    }
}

/// A model's prices, each in ticks per token (per image for images, per call for server-side
/// tools).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ModelPricing {
    /// Uncached prompt tokens.
    pub prompt: Ticks,
    /// Prompt tokens served from the upstream's cache.
    pub cached_prompt: Ticks,
    /// Completion tokens, and reasoning tokens (billed at the completion price).
    pub completion: Ticks,
    /// A generated image.
    pub image: Ticks,
    /// A web search run for the request (xAI's fee: $5 per 1,000 calls).
    pub web_search: Ticks,
    /// An X search run for the request (xAI's fee: $5 per 1,000 calls).
    pub x_search: Ticks,
}

impl ModelPricing {
    /// The exact cost of `usage`: uncached prompt tokens at the prompt price, cached ones at the
    /// cached price, completion and reasoning tokens at the completion price, images at the
    /// image price, and each server-side tool call at its fee.
    pub fn cost(&self, usage: &TokenUsage) -> Result<Ticks, TicksError> {
        let uncached = usage.prompt_tokens.saturating_sub(usage.cached_prompt_tokens);
        let cached = usage.prompt_tokens.min(usage.cached_prompt_tokens);
        let output = usage
            .completion_tokens
            .checked_add(usage.reasoning_tokens)
            .ok_or(TicksError::Overflow)?;
        self.prompt
            .checked_mul(uncached)?
            .checked_add(self.cached_prompt.checked_mul(cached)?)?
            .checked_add(self.completion.checked_mul(output)?)?
            .checked_add(self.image.checked_mul(usage.images)?)?
            .checked_add(self.web_search.checked_mul(usage.web_search_calls)?)?
            .checked_add(self.x_search.checked_mul(usage.x_search_calls)?)
    }

    /// An upper bound of a request's cost before it runs, from its worst case (the whole output
    /// budget used, every image and tool call made): every prompt token priced uncached.
    pub fn upper_bound(&self, worst: &TokenUsage) -> Result<Ticks, TicksError> {
        self.cost(&TokenUsage {
            cached_prompt_tokens: 0,
            ..*worst
        })
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn cents_round_half_away_from_zero() {
        for (ticks, cents) in [
            (0, 0),
            (49_999_999, 0),
            (50_000_000, 1),
            (-50_000_000, -1),
            (-49_999_999, 0),
            (125_000_000_000, 1250),
            (150_000_000, 2),
        ] {
            assert_eq!(Ticks::new(ticks).to_cents_rounded(), cents, "{ticks}");
        }
    }

    use super::*;

    fn usage(prompt: u64, cached: u64, completion: u64, reasoning: u64) -> TokenUsage {
        TokenUsage {
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            completion_tokens: completion,
            reasoning_tokens: reasoning,
            ..TokenUsage::default()
        }
    }

    #[test]
    fn prices_each_kind_of_token() {
        // $2/M prompt, $0.50/M cached, $10/M completion, in xAI's unit.
        let pricing = ModelPricing {
            prompt: Ticks::new(20_000),
            cached_prompt: Ticks::new(5_000),
            completion: Ticks::new(100_000),
            image: Ticks::new(200_000_000),
            web_search: Ticks::new(50_000_000),
            x_search: Ticks::new(40_000_000),
        };
        // xAI's published example: 199 prompt (163 cached), 1 completion.
        let cost = pricing.cost(&usage(199, 163, 1, 0)).unwrap();
        assert_eq!(cost, Ticks::new(36 * 20_000 + 163 * 5_000 + 100_000));
        // Reasoning is billed at the completion price.
        assert_eq!(pricing.cost(&usage(0, 0, 2, 3)).unwrap(), Ticks::new(500_000));
        // Images are priced per image: xAI's $0.02 an image is 200,000,000 ticks.
        let images = TokenUsage {
            images: 2,
            ..TokenUsage::default()
        };
        assert_eq!(pricing.cost(&images).unwrap(), Ticks::new(400_000_000));
        let worst = TokenUsage {
            prompt_tokens: 10,
            cached_prompt_tokens: 10,
            images: 3,
            ..TokenUsage::default()
        };
        assert_eq!(pricing.upper_bound(&worst).unwrap(), Ticks::new(200_000 + 600_000_000));
        // Server-side tool calls: a fee each.
        let searches = TokenUsage {
            web_search_calls: 3,
            x_search_calls: 2,
            ..TokenUsage::default()
        };
        assert_eq!(
            pricing.cost(&searches).unwrap(),
            Ticks::new(3 * 50_000_000 + 2 * 40_000_000)
        );
    }

    #[test]
    fn overflow_is_an_error() {
        let pricing = ModelPricing {
            prompt: Ticks::new(i64::MAX),
            ..ModelPricing::default()
        };
        assert_eq!(pricing.cost(&usage(2, 0, 0, 0)), Err(TicksError::Overflow));
        assert_eq!(Ticks::new(1).checked_mul(u64::MAX), Err(TicksError::Overflow));
    }

    #[test]
    fn displays_exact_dollars() {
        assert_eq!(Ticks::new(158_500).to_string(), "$0.0000158500");
        assert_eq!(Ticks::new(-25 * Ticks::PER_USD).to_string(), "-$25.0000000000");
    }
}
