//! `settle-bench`: how many requests per second the money path can settle durably, without
//! HTTP or an upstream in the way. Each of `concurrency` tasks loops: hold a request's worst
//! case against its team's credit (growing the node's lease from the database when it runs
//! short), record its usage and spend through the group commit, wait for the commit, release
//! the hold. That is what every billed request does after the model has answered; the gateway
//! can settle no faster than this. Runs one hot team, then `--teams` teams (round robin), then
//! the hot team on a free model (usage recorded, nothing held or spent), and checks the ledger
//! afterwards. A measurement, not a test: it asserts nothing about speed.
//!
//! ```text
//! cargo run --release -p tollgate-bench --bin settle-bench
//! cargo run --release -p tollgate-bench --bin settle-bench -- --database-url postgres://postgres@127.0.0.1/bench
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use tollgate_core::billing::Credits;
use tollgate_core::usage::UsageRecorder;
use tollgate_domain::{
    ApiKeyId, Clock, Endpoint, ModelPricing, RequestId, SystemClock, TeamId, Ticks, TokenUsage, UsageRecord,
};
use tollgate_store::Charge;

#[derive(Debug, Parser)]
#[command(about = "Benchmark durable settlement (credit hold, group commit of usage and spend) alone")]
struct Args {
    /// Settlements in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Teams for the many-teams run.
    #[arg(long, default_value_t = 1_000)]
    teams: usize,
    /// Seconds measured per run (after a second of warm-up).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// A PostgreSQL database to use instead of a temporary SQLite file (it should be empty:
    /// the benchmark migrates it and leaves its rows).
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds to sit idle after the seeding, after each run, and between taking a run's leases
    /// and starting it (a profiler's moment to zero or dump its counts: `callgrind_control
    /// --zero` and `--dump` at the pauses count one run's instructions alone).
    #[arg(long, default_value_t = 0)]
    pause: u64,
    /// The runs to make, in order (a profile of one run alone: `--runs teams`).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Runs::Hot, Runs::Teams, Runs::Free])]
    runs: Vec<Runs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runs {
    /// One hot team on a priced model.
    Hot,
    /// `--teams` teams on a priced model.
    Teams,
    /// One team on a free model: usage recorded, nothing held or spent.
    Free,
    /// `--teams` teams on a free model: what the many-teams run costs without billing.
    FreeTeams,
}

/// A small chat completion at the bench model's prices, and its worst case (what admission
/// holds: the prompt bound plus a `max_tokens` of 256).
const USAGE: TokenUsage = TokenUsage {
    prompt_tokens: 20,
    cached_prompt_tokens: 0,
    completion_tokens: 12,
    reasoning_tokens: 0,
    images: 0,
    web_search_calls: 0,
    x_search_calls: 0,
};
const WORST_CASE: TokenUsage = TokenUsage {
    completion_tokens: 256,
    ..USAGE
};

fn pricing(per_completion_token: i64) -> ModelPricing {
    ModelPricing {
        prompt: Ticks::new(per_completion_token / 5),
        cached_prompt: Ticks::new(per_completion_token / 5),
        completion: Ticks::new(per_completion_token),
        image: Ticks::ZERO,
        web_search: Ticks::ZERO,
        x_search: Ticks::ZERO,
    }
}

struct Run {
    settled: u64,
    /// Every settlement of the run, the warm-up's and the last ones' too.
    all: u64,
    elapsed: Duration,
    /// Per settlement, from asking for the hold to the commit: sorted.
    latencies: Vec<Duration>,
    /// The process's CPU time while measuring (every thread: the settling tasks, the group
    /// commit's writer, the database's).
    cpu: Option<Duration>,
}

async fn run(
    credits: &Credits,
    usage: &UsageRecorder,
    clock: &Arc<dyn Clock>,
    payers: &[(TeamId, ApiKeyId)],
    priced: ModelPricing,
    args: &Args,
) -> anyhow::Result<Run> {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let settled = Arc::new(AtomicU64::new(0));
    let all = Arc::new(AtomicU64::new(0));
    let payers: Arc<[(TeamId, ApiKeyId)]> = payers.into();
    let worst = priced.cost(&WORST_CASE)?;
    let cost = priced.cost(&USAGE)?;
    let mut tasks = Vec::with_capacity(args.concurrency);
    for worker in 0..args.concurrency {
        let (credits, usage, clock) = (credits.clone(), usage.clone(), Arc::clone(clock));
        let (measuring, stop, settled, all, payers) = (
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&settled),
            Arc::clone(&all),
            Arc::clone(&payers),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut next = worker;
            while !stop.load(Ordering::Relaxed) {
                let (team_id, api_key_id) = payers[next % payers.len()];
                next += stride(payers.len());
                let started = Instant::now();
                let hold = credits.hold(team_id, worst).await?;
                let record = UsageRecord {
                    request_id: RequestId::new(),
                    team_id,
                    api_key_id,
                    model: "bench".into(),
                    endpoint: Endpoint::Chat,
                    usage: USAGE,
                    cost,
                    estimated: false,
                    streamed: false,
                    started_at: clock.now(),
                    duration_ms: 0,
                };
                usage
                    .record(Charge {
                        record,
                        pricing: priced,
                    })
                    .await?;
                credits.settled(hold, cost);
                all.fetch_add(1, Ordering::Relaxed);
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                    settled.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = tollgate_bench::process_cpu();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = tollgate_bench::process_cpu()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    latencies.sort_unstable();
    Ok(Run {
        settled: settled.load(Ordering::Relaxed),
        all: all.load(Ordering::Relaxed),
        elapsed,
        latencies,
        cpu,
    })
}

/// Sits idle for `--pause` seconds, saying how many settlements the run before made in all
/// (`scripts/settle-callgrind` divides a run's instructions by them).
async fn pause(args: &Args, settled_before: Option<u64>) {
    if args.pause > 0 {
        match settled_before {
            Some(all) => println!("(pausing {} s after {all} settlements)", args.pause),
            None => println!("(pausing {} s)", args.pause),
        }
        tokio::time::sleep(Duration::from_secs(args.pause)).await;
    }
}

/// Workers step through the teams so that at any moment they spread over all of them.
fn stride(teams: usize) -> usize {
    if teams == 1 { 0 } else { 7 }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(name: &str, run: &Run) {
    let at = |q: f64| {
        run.latencies
            .get(((run.latencies.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let cpu = match run.cpu {
        Some(cpu) if run.settled > 0 => format!("{:.1} µs", cpu.as_secs_f64() * 1e6 / run.settled as f64),
        _ => "?".to_owned(),
    };
    println!(
        "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {cpu} |",
        run.settled,
        run.settled as f64 / run.elapsed.as_secs_f64(),
        ms(at(0.5)),
        ms(at(0.99)),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.teams >= 1, "--teams must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    rlimit::increase_nofile_limit(u64::MAX)?;
    let dir = tempfile::tempdir()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let config = tollgate_server::Config::for_test(url);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = tollgate_server::open_store(&config).await?;
    let services = tollgate_server::services(&config, &store, &clock)?;
    let payers: Vec<(TeamId, ApiKeyId)> =
        tollgate_bench::seed_payers(&services, args.teams, || tollgate_core::NewApiKey {
            name: "bench".into(),
            acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
            ..Default::default()
        })
        .await?
        .iter()
        .map(|payer| (payer.key.team_id, payer.key.id))
        .collect();

    let settings = config.billing.credit()?;
    let (usage, writer) = UsageRecorder::start(Arc::clone(&store), Arc::clone(&clock), settings.default_hard_limit);
    let credits = Credits::new(Arc::clone(&store), Arc::clone(&clock), settings);
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = credits.clone().spawn_keeper(stop.clone());

    let backend = if args.database_url.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "settle-bench: {backend}, {} in flight, {} s per run",
        args.concurrency, args.seconds
    );
    println!();
    println!("| run | settled | settled/s | p50 | p99 | CPU per settlement |");
    println!("|---|---|---|---|---|---|");
    let priced = pricing(100_000);
    let mut last = None;
    for which in &args.runs {
        let (name, teams, prices) = match which {
            Runs::Hot => ("one hot team".to_owned(), &payers[..1], priced),
            Runs::Teams => (format!("{} teams", payers.len()), &payers[..], priced),
            Runs::Free => ("one team, free model (usage only)".to_owned(), &payers[..1], pricing(0)),
            Runs::FreeTeams => (
                format!("{} teams, free model (usage only)", payers.len()),
                &payers[..],
                pricing(0),
            ),
        };
        // The run before ends here; then every team's lease is taken, as on a server that has
        // served them for a while (a team's first request takes its lease, in a transaction of
        // its own), in a pause of its own: counted with neither run.
        if last.is_some() {
            pause(&args, last).await;
        }
        for (team_id, _) in teams {
            drop(credits.hold(*team_id, prices.cost(&WORST_CASE)?).await?);
        }
        pause(&args, None).await;
        let measured = run(&credits, &usage, &clock, teams, prices, &args).await?;
        report(&name, &measured);
        last = Some(measured.all);
    }
    pause(&args, last).await;

    stop.cancel();
    keeper.await?;
    drop(usage);
    writer.await?;
    if let Some(mismatch) = services.ledger.verify().await? {
        anyhow::bail!("the ledger does not add up: {mismatch}");
    }
    println!();
    println!("ledger verified: every balance is the sum of its entries, every usage row has its spend");
    Ok(())
}
