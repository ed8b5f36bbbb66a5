//! Usage analytics (xAI's `POST /v1/billing/teams/{id}/usage`): a time range cut into hours,
//! days or months, values (cost, tokens, requests) summed per group (model, API key, token
//! kind), filtered. The store sums usage per hour, model and key; this module buckets and groups
//! those sums, exactly (costs stay ticks).

use std::collections::BTreeMap;

use chrono::{Datelike as _, TimeZone as _, Timelike as _};

use crate::clock::Timestamp;
use crate::ids::ApiKeyId;
use crate::ledger::TokenKind;
use crate::money::Ticks;

/// How the range is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    /// Hours (UTC).
    Hour,
    /// Days (UTC).
    Day,
    /// Calendar months (UTC).
    Month,
    /// One point for the whole range.
    None,
}

impl TimeUnit {
    /// The start of the bucket `at` falls in (for [`TimeUnit::None`], `from`).
    #[must_use]
    pub fn bucket(self, at: Timestamp, from: Timestamp) -> Timestamp {
        let utc = chrono::Utc;
        let start = match self {
            TimeUnit::Hour => utc.with_ymd_and_hms(at.year(), at.month(), at.day(), at.hour(), 0, 0),
            TimeUnit::Day => utc.with_ymd_and_hms(at.year(), at.month(), at.day(), 0, 0, 0),
            TimeUnit::Month => utc.with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0),
            TimeUnit::None => return from,
        };
        start.single().unwrap_or(at)
    }
}

/// What is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    /// Cost, in ticks.
    Usd,
    /// Tokens.
    Tokens,
    /// Requests (not split by token kind: a request has all three).
    Requests,
}

/// What series are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    /// The model.
    Model,
    /// The API key.
    ApiKey,
    /// The kind of token.
    TokenType,
}

/// Keeps (or, negated, drops) usage whose `dimension` equals `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    /// What is compared.
    pub dimension: Dimension,
    /// With what (a model name, a key id, `prompt`/`cached_prompt`/`completion`).
    pub value: String,
    /// Whether it drops what matches.
    pub negate: bool,
}

/// One hour of one key's use of one model, summed (what the store returns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCell {
    /// The hour (UTC).
    pub hour: Timestamp,
    /// The model.
    pub model: String,
    /// The key.
    pub api_key_id: ApiKeyId,
    /// Requests.
    pub requests: u64,
    /// Tokens by kind: prompt (uncached), cached prompt, completion (with reasoning); then the
    /// images generated, the web searches and the X searches run (the order of [`KINDS`]).
    pub tokens: [u64; 6],
    /// Cost by kind, exactly (the same order).
    pub cost: [Ticks; 6],
}

/// A summed value: exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// Ticks.
    Usd(Ticks),
    /// A count.
    Count(u64),
}

/// One series: its group's labels and a point per bucket with usage, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// One label per dimension grouped by, in the request's order.
    pub group: Vec<String>,
    /// (bucket start, one value per measure in the request's order).
    pub points: Vec<(Timestamp, Vec<Value>)>,
}

/// The kinds a [`UsageCell`] counts, in its arrays' order.
pub const KINDS: [TokenKind; 6] = [
    TokenKind::Prompt,
    TokenKind::CachedPrompt,
    TokenKind::Completion,
    TokenKind::Image,
    TokenKind::WebSearch,
    TokenKind::XSearch,
];

/// The name a filter or a label uses for a token kind.
#[must_use]
pub const fn token_type_name(kind: TokenKind) -> &'static str {
    match kind {
        TokenKind::Prompt => "prompt",
        TokenKind::CachedPrompt => "cached_prompt",
        TokenKind::Completion => "completion",
        TokenKind::Image => "image",
        TokenKind::WebSearch => "web_search",
        TokenKind::XSearch => "x_search",
    }
}

#[derive(Default, Clone, Copy)]
struct Sums {
    ticks: i64,
    tokens: u64,
    requests: u64,
}

/// Buckets, filters and groups `cells` (all within `[from, to)`).
#[must_use]
pub fn aggregate(
    cells: &[UsageCell],
    from: Timestamp,
    unit: TimeUnit,
    measures: &[Measure],
    group_by: &[Dimension],
    filters: &[UsageFilter],
) -> Vec<Series> {
    let split_by_kind =
        group_by.contains(&Dimension::TokenType) || filters.iter().any(|f| f.dimension == Dimension::TokenType);
    let mut series: BTreeMap<Vec<String>, BTreeMap<Timestamp, Sums>> = BTreeMap::new();
    for cell in cells {
        let key_id = cell.api_key_id.to_string();
        let kinds: Vec<Option<TokenKind>> = if split_by_kind {
            // Images and tool calls only where there are some: most requests have none.
            KINDS
                .iter()
                .zip(cell.tokens)
                .filter(|(kind, count)| kind.is_tokens() || *count > 0)
                .map(|(kind, _)| Some(*kind))
                .collect()
        } else {
            vec![None]
        };
        for kind in kinds {
            let label = |dimension: Dimension| -> String {
                match dimension {
                    Dimension::Model => cell.model.clone(),
                    Dimension::ApiKey => key_id.clone(),
                    Dimension::TokenType => kind.map_or("", token_type_name).to_owned(),
                }
            };
            if !filters.iter().all(|f| (label(f.dimension) == f.value) != f.negate) {
                continue;
            }
            let group: Vec<String> = group_by.iter().map(|d| label(*d)).collect();
            let sums = series
                .entry(group)
                .or_default()
                .entry(unit.bucket(cell.hour, from))
                .or_default();
            let (ticks, tokens) = match kind {
                Some(kind) => {
                    let index = KINDS.iter().position(|k| *k == kind).unwrap_or(0);
                    (cell.cost[index].get(), cell.tokens[index])
                }
                None => (
                    cell.cost.iter().fold(0i64, |sum, t| sum.saturating_add(t.get())),
                    // Tokens, not images or calls: neither is a token.
                    KINDS
                        .iter()
                        .zip(cell.tokens)
                        .filter(|(kind, _)| kind.is_tokens())
                        .fold(0u64, |sum, (_, t)| sum.saturating_add(t)),
                ),
            };
            sums.ticks = sums.ticks.saturating_add(ticks);
            sums.tokens = sums.tokens.saturating_add(tokens);
            // A request counts once, under its first kind when split.
            if kind.is_none_or(|k| k == TokenKind::Prompt) {
                sums.requests = sums.requests.saturating_add(cell.requests);
            }
        }
    }
    series
        .into_iter()
        .map(|(group, points)| Series {
            group,
            points: points
                .into_iter()
                .map(|(at, sums)| {
                    let values = measures
                        .iter()
                        .map(|measure| match measure {
                            Measure::Usd => Value::Usd(Ticks::new(sums.ticks)),
                            Measure::Tokens => Value::Count(sums.tokens),
                            Measure::Requests => Value::Count(sums.requests),
                        })
                        .collect();
                    (at, values)
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn cell(hour: &str, model: &str, key: ApiKeyId, cost: [i64; 3]) -> UsageCell {
        UsageCell {
            hour: at(hour),
            model: model.into(),
            api_key_id: key,
            requests: 2,
            tokens: [10, 4, 5, 0, 0, 0],
            cost: [cost[0], cost[1], cost[2], 0, 0, 0].map(Ticks::new),
        }
    }

    #[test]
    fn buckets_groups_and_filters_exactly() {
        let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
        let cells = [
            cell("2026-11-01T10:00:00Z", "m1", a, [100, 20, 300]),
            cell("2026-11-01T11:00:00Z", "m1", b, [1, 2, 3]),
            cell("2026-11-02T00:00:00Z", "m2", a, [5, 0, 7]),
        ];
        let from = at("2026-11-01T00:00:00Z");
        let by_day = aggregate(
            &cells,
            from,
            TimeUnit::Day,
            &[Measure::Usd, Measure::Requests],
            &[],
            &[],
        );
        assert_eq!(
            by_day,
            [Series {
                group: vec![],
                points: vec![
                    (
                        at("2026-11-01T00:00:00Z"),
                        vec![Value::Usd(Ticks::new(426)), Value::Count(4)]
                    ),
                    (
                        at("2026-11-02T00:00:00Z"),
                        vec![Value::Usd(Ticks::new(12)), Value::Count(2)]
                    ),
                ],
            }]
        );
        let by_model_kind = aggregate(
            &cells,
            from,
            TimeUnit::Month,
            &[Measure::Tokens, Measure::Usd],
            &[Dimension::Model, Dimension::TokenType],
            &[UsageFilter {
                dimension: Dimension::ApiKey,
                value: b.to_string(),
                negate: true,
            }],
        );
        let groups: Vec<(Vec<String>, Vec<Value>)> = by_model_kind
            .into_iter()
            .map(|s| (s.group, s.points[0].1.clone()))
            .collect();
        let group = |m: &str, k: &str| vec![m.to_owned(), k.to_owned()];
        assert_eq!(
            groups,
            [
                (
                    group("m1", "cached_prompt"),
                    vec![Value::Count(4), Value::Usd(Ticks::new(20))]
                ),
                (
                    group("m1", "completion"),
                    vec![Value::Count(5), Value::Usd(Ticks::new(300))]
                ),
                (
                    group("m1", "prompt"),
                    vec![Value::Count(10), Value::Usd(Ticks::new(100))]
                ),
                (
                    group("m2", "cached_prompt"),
                    vec![Value::Count(4), Value::Usd(Ticks::ZERO)]
                ),
                (
                    group("m2", "completion"),
                    vec![Value::Count(5), Value::Usd(Ticks::new(7))]
                ),
                (group("m2", "prompt"), vec![Value::Count(10), Value::Usd(Ticks::new(5))]),
            ]
        );
    }

    #[test]
    fn images_are_a_kind_of_their_own_and_no_tokens() {
        let key = ApiKeyId::new();
        let mut images = cell("2026-11-01T10:00:00Z", "imagine", key, [0, 0, 0]);
        images.tokens = [0, 0, 0, 3, 0, 0];
        images.cost[3] = Ticks::new(600);
        let from = at("2026-11-01T00:00:00Z");
        let total = aggregate(
            &[images.clone()],
            from,
            TimeUnit::None,
            &[Measure::Tokens, Measure::Usd],
            &[],
            &[],
        );
        assert_eq!(total[0].points[0].1, [Value::Count(0), Value::Usd(Ticks::new(600))]);
        let by_kind = aggregate(
            &[images],
            from,
            TimeUnit::None,
            &[Measure::Tokens, Measure::Usd],
            &[Dimension::TokenType],
            &[UsageFilter {
                dimension: Dimension::TokenType,
                value: "image".into(),
                negate: false,
            }],
        );
        assert_eq!(by_kind.len(), 1);
        assert_eq!(by_kind[0].group, ["image"]);
        assert_eq!(by_kind[0].points[0].1, [Value::Count(3), Value::Usd(Ticks::new(600))]);
    }
}
