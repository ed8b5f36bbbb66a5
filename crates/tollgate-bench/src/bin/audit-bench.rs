//! `audit-bench`: fills one team's audit log with a million events (a year of them, 50 people,
//! every action), then times the searches the console and the Management API make, a full
//! export and a full chain verification. A measurement, not a test: it asserts nothing about
//! speed.
//!
//! ```text
//! cargo run --release -p tollgate-bench --bin audit-bench -- --events 1000000
//! cargo run --release -p tollgate-bench --bin audit-bench -- --database-url postgres://postgres@127.0.0.1/bench
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tollgate_core::{AuditFilter, AuditService, Caller};
use tollgate_domain::{Actor, AuditAction, AuditEvent, Clock, RequestContext, SystemClock, TeamId, Timestamp, UserId};
use tollgate_server::Config;

#[derive(Debug, Parser)]
#[command(about = "Benchmark audit log search, export and verification on a large log")]
struct Args {
    /// Events to write into the team's log.
    #[arg(long, default_value_t = 1_000_000)]
    events: u32,
    /// Database to use (default: a SQLite file in a temporary directory). Use an empty
    /// PostgreSQL database: the benchmark migrates it and leaves its data there.
    #[arg(long)]
    database_url: Option<String>,
    /// Times each search is repeated; the median and the slowest are reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Event `i` of `n`, spread evenly over the year before `now`: mostly key listings and uses of
/// the API, some creations, very few exports (the rare needle).
fn event(i: u32, n: u32, now: Timestamp, team: TeamId, people: &[(UserId, String)]) -> AuditEvent {
    let at = now - chrono::Duration::seconds(i64::from(n - i) * 365 * 86_400 / i64::from(n.max(1)));
    let (id, email) = &people[i as usize % people.len()];
    let actor = Actor::User {
        id: *id,
        email: email.clone(),
    };
    let (action, description) = match i % 10_000 {
        0 => (
            AuditAction::ExportAuditEvents,
            "Exported the audit log as csv".to_owned(),
        ),
        n if n % 10 < 5 => (AuditAction::ListApiKeys, format!("Listed {} API keys", n % 40)),
        n if n % 10 < 8 => (
            AuditAction::CreateApiKey,
            format!("Created API key 'svc-{n}' (tgk_...{n:04})"),
        ),
        n if n % 10 < 9 => (
            AuditAction::ListAuditEvents,
            format!("Searched the audit log ({} events)", n % 100),
        ),
        _ => (
            AuditAction::CreateManagementKey,
            format!("Created management key 'ops-{i}'"),
        ),
    };
    let context = RequestContext {
        ip: Some(format!("198.51.100.{}", i % 250)),
        user_agent: Some("openai-python/1.54.0".into()),
        request_id: Some(uuid_like(i)),
    };
    AuditEvent::success(at, Some(team), actor, action, description, None, &context)
}

fn uuid_like(i: u32) -> String {
    format!("00000000-0000-7000-8000-{i:012}")
}

struct Timing {
    median: Duration,
    slowest: Duration,
    found: usize,
}

async fn time_search(
    audit: &AuditService,
    caller: &Caller,
    filter: &AuditFilter,
    token: Option<&str>,
    runs: usize,
) -> anyhow::Result<Timing> {
    let mut times = Vec::with_capacity(runs);
    let mut found = 0;
    for _ in 0..runs {
        let started = Instant::now();
        let page = audit
            .search(caller, caller.team_id(), filter, token, 100, &RequestContext::default())
            .await?;
        times.push(started.elapsed());
        found = page.events.len();
    }
    times.sort_unstable();
    Ok(Timing {
        median: times[times.len() / 2],
        slowest: times[times.len() - 1],
        found,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let mut config = Config::for_test(url.clone());
    config.audit.key_file = dir.path().join("audit-chain.key");
    config.audit.key = None;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = tollgate_server::open_store(&config).await?;
    let services = tollgate_server::services(&config, &store, &clock)?;
    let (_, team) = services
        .accounts
        .create_user(
            &format!("bench-{}@example.com", uuid_like(std::process::id())),
            "Bench",
            "a long enough benchmark passphrase",
            Actor::Operator,
            &RequestContext::default(),
        )
        .await?;
    let (key, _) = services
        .keys
        .create_management_key(team.id, "bench", Actor::Operator, None, &RequestContext::default())
        .await?;
    let caller = Caller::from(key);
    let people: Vec<(UserId, String)> = (0..50)
        .map(|p| (UserId::new(), format!("person{p}@example.com")))
        .collect();

    let now = clock.now();
    let started = Instant::now();
    let batch = 10_000;
    let mut i = 0;
    while i < args.events {
        let end = (i + batch).min(args.events);
        let events: Vec<AuditEvent> = (i..end).map(|j| event(j, args.events, now, team.id, &people)).collect();
        store.append_audit_events(&events).await?;
        i = end;
    }
    let fill = started.elapsed();
    // What autovacuum would soon do after such a load: give the planner statistics.
    store.analyze().await?;
    println!(
        "backend {:?}: wrote {} events in {:.1} s ({:.0} events/s, chained, in batches of {batch})",
        store.backend(),
        args.events,
        fill.as_secs_f64(),
        f64::from(args.events) / fill.as_secs_f64()
    );

    // A deep keyset position: the 50th page of the newest-first listing.
    let mut token: Option<String> = None;
    for _ in 0..49 {
        let page = services
            .audit
            .search(
                &caller,
                team.id,
                &AuditFilter::default(),
                token.as_deref(),
                100,
                &RequestContext::default(),
            )
            .await?;
        token = page.next_page_token;
    }
    let some_event = store
        .search_audit_events(&tollgate_store::AuditQuery {
            team_id: team.id,
            event_id: None,
            actor_id: None,
            text: None,
            from: Some(now - chrono::Duration::days(180)),
            to: None,
            newest_first: false,
            after: None,
            limit: 1,
        })
        .await?;
    let middle = now - chrono::Duration::days(182);
    let cases: Vec<(&str, AuditFilter, Option<String>)> = vec![
        ("newest page", AuditFilter::default(), None),
        (
            "oldest page",
            AuditFilter {
                oldest_first: true,
                ..AuditFilter::default()
            },
            None,
        ),
        ("50th page (keyset)", AuditFilter::default(), token.clone()),
        (
            "by event id",
            AuditFilter {
                event_id: some_event.first().map(|e| e.id),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "by user (1 of 50)",
            AuditFilter {
                user_id: Some(people[7].0.to_string()),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "one day, mid-year",
            AuditFilter {
                from: Some(middle),
                to: Some(middle + chrono::Duration::days(1)),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "text, common (ListApiKeys)",
            AuditFilter {
                query: Some("ListApiKeys".into()),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "text, rare (ExportAuditEvents, 0.01%)",
            AuditFilter {
                query: Some("exportauditevents".into()),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "text, absent (full scan)",
            AuditFilter {
                query: Some("no such event".into()),
                ..AuditFilter::default()
            },
            None,
        ),
        (
            "user + text + one month",
            AuditFilter {
                user_id: Some(people[7].0.to_string()),
                query: Some("Created".into()),
                from: Some(middle),
                to: Some(middle + chrono::Duration::days(30)),
                ..AuditFilter::default()
            },
            None,
        ),
    ];
    println!(
        "\nsearch (page of 100, through the service incl. its own audit write), {} runs:",
        args.runs
    );
    println!("{:<40} {:>10} {:>10} {:>7}", "case", "median ms", "max ms", "found");
    for (name, filter, token) in &cases {
        let timing = time_search(&services.audit, &caller, filter, token.as_deref(), args.runs).await?;
        println!(
            "{name:<40} {:>10.2} {:>10.2} {:>7}",
            ms(timing.median),
            ms(timing.slowest),
            timing.found
        );
    }

    let started = Instant::now();
    let mut export = services
        .audit
        .export(
            &caller,
            team.id,
            AuditFilter {
                oldest_first: true,
                ..AuditFilter::default()
            },
            "jsonl",
            &RequestContext::default(),
        )
        .await?;
    let (mut rows, mut bytes) = (0_usize, 0_usize);
    while let Some(page) = export.next_page().await? {
        for record in &page {
            bytes += tollgate_http::ExportFormat::JsonLines.line(record).len();
        }
        rows += page.len();
    }
    let elapsed = started.elapsed();
    println!(
        "\nexport as JSON lines: {rows} events, {:.0} MB in {:.1} s ({:.0} events/s)",
        bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64()
    );

    let started = Instant::now();
    let report = services
        .audit
        .verify(Some(team.id))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no chain"))?;
    let elapsed = started.elapsed();
    println!(
        "verify chain: {} events in {:.1} s ({:.0} events/s): {:?}",
        report.checked,
        elapsed.as_secs_f64(),
        report.checked as f64 / elapsed.as_secs_f64(),
        report.result
    );
    store.close().await;
    Ok(())
}
