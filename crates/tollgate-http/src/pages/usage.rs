//! The team's Usage page: cost (or tokens, or requests) by day, stacked by model or by API key,
//! drawn on the server as SVG (no chart script), with the table behind it. Admins see the
//! team's usage; a Member the usage of the keys they created (the service decides). Bars are
//! scaled with integers: amounts stay exact ticks until they become pixels.

use tollgate_core::billing::UsageQuery;
use tollgate_domain::Ticks;
use tollgate_domain::analytics::{Dimension, Measure, TimeUnit, Value};

use super::billing::dollars;
use super::*;

/// Colours for the stacked series (the Okabe–Ito palette, told apart with colour blindness),
/// the last for everything beyond them.
const COLOURS: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#777777",
];

/// The chart's drawing area, in SVG units.
const WIDTH: i64 = 720;
const HEIGHT: i64 = 220;
const LEFT: i64 = 64;
const BOTTOM: i64 = 24;
const TOP: i64 = 12;

#[derive(Deserialize)]
pub(super) struct UsageParams {
    team: Option<String>,
    /// 7, 30 or 90 (anything else: 30, as a hand-edited address deserves a page, not a 400).
    days: Option<String>,
    /// `model` or `key`.
    by: Option<String>,
    /// `usd`, `tokens` or `requests`.
    show: Option<String>,
}

struct Bar {
    x: i64,
    width: i64,
    /// (y, height, colour, what it shows) from the bottom up.
    parts: Vec<(i64, i64, &'static str, String)>,
}

struct Tick {
    y: i64,
    label: String,
}

struct DayLabel {
    x: i64,
    label: String,
}

struct LegendItem {
    colour: &'static str,
    label: String,
    total: String,
}

struct Row {
    day: String,
    series: String,
    requests: u64,
    tokens: u64,
    cost: String,
}

#[derive(Template)]
#[template(path = "usage.html")]
struct UsagePage {
    frame: Frame,
    days: i64,
    by: &'static str,
    show: &'static str,
    own_keys_only: bool,
    heading: String,
    bars: Vec<Bar>,
    ticks: Vec<Tick>,
    day_labels: Vec<DayLabel>,
    legend: Vec<LegendItem>,
    rows: Vec<Row>,
    total_cost: String,
    total_tokens: u64,
    total_requests: u64,
    width: i64,
    height: i64,
    left: i64,
    error: Option<String>,
}

impl std::ops::Deref for UsagePage {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        &self.frame
    }
}

/// One series' sums for one day: cost, tokens, requests.
#[derive(Clone, Copy, Default)]
struct Sums {
    cost: i64,
    tokens: u64,
    requests: u64,
}

/// `/console/usage`.
pub(super) async fn usage(
    State(state): State<AppState>,
    RequestMeta(meta): RequestMeta,
    headers: HeaderMap,
    Query(params): Query<UsageParams>,
) -> Response {
    let context = match context(&state, &headers, params.team.clone()).await {
        Ok(context) => context,
        Err(response) => return response,
    };
    let days = params
        .days
        .and_then(|days| days.parse::<i64>().ok())
        .filter(|days| [7, 30, 90].contains(days))
        .unwrap_or(30);
    let by = match params.by.as_deref() {
        Some("key") => "key",
        _ => "model",
    };
    let show = match params.show.as_deref() {
        Some("tokens") => "tokens",
        Some("requests") => "requests",
        _ => "usd",
    };
    let now = state.clock.now();
    let today = TimeUnit::Day.bucket(now, now);
    let to = today + chrono::Duration::days(1);
    let from = to - chrono::Duration::days(days);
    let query = UsageQuery {
        from,
        to,
        unit: TimeUnit::Day,
        measures: vec![Measure::Usd, Measure::Tokens, Measure::Requests],
        group_by: vec![if by == "key" {
            Dimension::ApiKey
        } else {
            Dimension::Model
        }],
        filters: Vec::new(),
    };
    let (series, error) = match state.ledger.usage(&context.caller, &query).await {
        Ok(series) => (series, None),
        Err(error) => (Vec::new(), Some(failure(error))),
    };
    // Keys are named as the team names them (a Member's own keys, or every key for Admins).
    let key_names: std::collections::HashMap<String, String> = if by == "key" {
        state
            .keys
            .list_api_keys(&context.caller, context.team_id, None, 1_000, &meta)
            .await
            .map(|keys| keys.into_iter().map(|k| (k.id.to_string(), k.name)).collect())
            .unwrap_or_default()
    } else {
        Default::default()
    };

    // Dense days, and each series' sums per day.
    let day_starts: Vec<tollgate_domain::Timestamp> = (0..days).map(|i| from + chrono::Duration::days(i)).collect();
    let mut named: Vec<(String, Vec<Sums>, Sums)> = series
        .iter()
        .map(|series| {
            let label = series.group.first().cloned().unwrap_or_default();
            let label = key_names.get(&label).cloned().unwrap_or(label);
            let mut per_day = vec![Sums::default(); day_starts.len()];
            let mut total = Sums::default();
            for (at, values) in &series.points {
                let Some(index) = day_starts.iter().position(|d| d == at) else {
                    continue;
                };
                let sums = match values.as_slice() {
                    [Value::Usd(cost), Value::Count(tokens), Value::Count(requests)] => Sums {
                        cost: cost.get(),
                        tokens: *tokens,
                        requests: *requests,
                    },
                    _ => Sums::default(),
                };
                per_day[index] = sums;
                total.cost = total.cost.saturating_add(sums.cost);
                total.tokens = total.tokens.saturating_add(sums.tokens);
                total.requests = total.requests.saturating_add(sums.requests);
            }
            (label, per_day, total)
        })
        .collect();
    let measure = |sums: &Sums| -> i128 {
        match show {
            "tokens" => i128::from(sums.tokens),
            "requests" => i128::from(sums.requests),
            _ => i128::from(sums.cost),
        }
    };
    // The biggest first; beyond the palette, one "other" series.
    named.sort_by_key(|(label, _, total)| (std::cmp::Reverse(measure(total)), label.clone()));
    if named.len() > COLOURS.len() {
        let rest = named.split_off(COLOURS.len() - 1);
        let mut per_day = vec![Sums::default(); day_starts.len()];
        let mut total = Sums::default();
        for (_, days, sums) in &rest {
            for (into, from) in per_day.iter_mut().zip(days) {
                into.cost = into.cost.saturating_add(from.cost);
                into.tokens = into.tokens.saturating_add(from.tokens);
                into.requests = into.requests.saturating_add(from.requests);
            }
            total.cost = total.cost.saturating_add(sums.cost);
            total.tokens = total.tokens.saturating_add(sums.tokens);
            total.requests = total.requests.saturating_add(sums.requests);
        }
        named.push((format!("{} others", rest.len()), per_day, total));
    }
    let format = |value: i128| -> String {
        match show {
            "usd" => dollars(Ticks::new(i64::try_from(value).unwrap_or(i64::MAX))),
            _ => value.to_string(),
        }
    };

    // The scale: the tallest day, rounded up to a step people read (1, 2 or 5 times a power
    // of ten), in four gridlines.
    let tallest = (0..day_starts.len())
        .map(|i| named.iter().map(|(_, days, _)| measure(&days[i])).sum::<i128>())
        .max()
        .unwrap_or(0);
    let step = nice_step((tallest.max(1) + 3) / 4);
    let top = step * 4;
    let plot = HEIGHT - BOTTOM - TOP;
    let pixels = |value: i128| -> i64 { i64::try_from(value * i128::from(plot) / top).unwrap_or(plot) };
    let slot = (WIDTH - LEFT) / i64::try_from(day_starts.len()).unwrap_or(1).max(1);
    let bars = (0..day_starts.len())
        .map(|i| {
            let x = LEFT + i64::try_from(i).unwrap_or(0) * slot + slot / 8;
            let mut base = 0i128;
            let parts = named
                .iter()
                .enumerate()
                .filter(|(_, (_, days, _))| measure(&days[i]) > 0)
                .map(|(n, (label, days, _))| {
                    let value = measure(&days[i]);
                    let y0 = pixels(base);
                    base += value;
                    let y1 = pixels(base);
                    (
                        TOP + plot - y1,
                        (y1 - y0).max(1),
                        COLOURS[n.min(COLOURS.len() - 1)],
                        format!("{} {}: {}", day_starts[i].format("%b %-d"), label, format(value)),
                    )
                })
                .collect();
            Bar {
                x,
                width: (slot - slot / 4).max(1),
                parts,
            }
        })
        .collect();
    let ticks = (0..=4)
        .map(|n| Tick {
            y: TOP + plot - pixels(step * n),
            label: format(step * n),
        })
        .collect();
    let every = usize::try_from((days / 6).max(1)).unwrap_or(1);
    let day_labels = day_starts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0)
        .map(|(i, day)| DayLabel {
            x: LEFT + i64::try_from(i).unwrap_or(0) * slot + slot / 2,
            label: day.format("%b %-d").to_string(),
        })
        .collect();
    let legend = named
        .iter()
        .enumerate()
        .map(|(n, (label, _, total))| LegendItem {
            colour: COLOURS[n.min(COLOURS.len() - 1)],
            label: label.clone(),
            total: format(measure(total)),
        })
        .collect();
    let mut rows = Vec::new();
    for (i, day) in day_starts.iter().enumerate().rev() {
        for (label, days, _) in &named {
            let sums = days[i];
            if sums.requests > 0 || sums.cost != 0 || sums.tokens > 0 {
                rows.push(Row {
                    day: day.format("%Y-%m-%d").to_string(),
                    series: label.clone(),
                    requests: sums.requests,
                    tokens: sums.tokens,
                    cost: dollars(Ticks::new(sums.cost)),
                });
            }
        }
    }
    let totals = named.iter().fold(Sums::default(), |mut all, (_, _, total)| {
        all.cost = all.cost.saturating_add(total.cost);
        all.tokens = all.tokens.saturating_add(total.tokens);
        all.requests = all.requests.saturating_add(total.requests);
        all
    });
    let page = UsagePage {
        frame: context.frame(&state, "/console/usage"),
        days,
        by,
        show,
        own_keys_only: !context.caller.allows(Permission::ManageBilling),
        heading: format!(
            "{} by day, by {}, the last {days} days",
            match show {
                "tokens" => "Tokens",
                "requests" => "Requests",
                _ => "Cost",
            },
            if by == "key" { "API key" } else { "model" }
        ),
        bars,
        ticks,
        day_labels,
        legend,
        rows,
        total_cost: dollars(Ticks::new(totals.cost)),
        total_tokens: totals.tokens,
        total_requests: totals.requests,
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        error: error.as_ref().map(|(_, message)| message.clone()),
    };
    let status = error.map_or(StatusCode::OK, |(status, _)| status);
    let mut response = console_page(&state, context.team_id, &page);
    *response.status_mut() = status;
    response
}

/// The smallest of 1, 2 or 5 times a power of ten that is at least `at_least`.
fn nice_step(at_least: i128) -> i128 {
    let mut power = 1i128;
    loop {
        for factor in [1, 2, 5] {
            if factor * power >= at_least {
                return factor * power;
            }
        }
        power = power.saturating_mul(10);
    }
}

#[cfg(test)]
mod tests {
    use super::nice_step;

    #[test]
    fn steps_are_ones_twos_and_fives() {
        assert_eq!(nice_step(1), 1);
        assert_eq!(nice_step(3), 5);
        assert_eq!(nice_step(7), 10);
        assert_eq!(nice_step(11), 20);
        assert_eq!(nice_step(450_000_000), 500_000_000);
    }
}
