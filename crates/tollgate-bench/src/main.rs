//! `tollgate-bench`: starts the mock upstream and a real tollgate (SQLite in a temporary
//! directory, or the PostgreSQL database given), drives the same load at the upstream directly
//! and through tollgate — once on a priced model (credit held and spent: billing in the path) and
//! once on a free one (no hold, no spend) — spread over one team or many, and reports requests/s
//! and the latency tollgate adds. A measurement, not a test: it asserts nothing about speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use tollgate_domain::{Clock, SystemClock};
use tollgate_server::config::ModelConfig;

#[derive(Debug, Parser)]
#[command(about = "Benchmark tollgate's inference endpoints against the upstream called directly")]
struct Args {
    /// Requests per run.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Stream the answers (SSE) instead of plain JSON.
    #[arg(long)]
    stream: bool,
    /// How many times the free and the billed model take turns (each turn sends `requests /
    /// rounds` requests to each): more turns spread a drifting machine over both evenly, and
    /// billing's cost is printed for each turn, to show how far it moves within one run.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Requests per run sent first and not measured.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
    /// Teams the requests are spread over (round robin, one key each).
    #[arg(long, default_value_t = 1)]
    teams: usize,
    /// The endpoint family to load: chat completions, responses (stored, the default), legacy
    /// completions or embeddings. The upstream is called directly on its own counterpart.
    #[arg(long, value_enum, default_value_t = Family::Chat)]
    endpoint: Family,
    /// Call tollgate over gRPC (xAI's `Chat` service, as the xai-sdk does: `GetCompletion`, or
    /// `GetCompletionChunk` with `--stream`) instead of REST; chat only. The upstream is the same.
    #[arg(long)]
    grpc: bool,
    /// With `--endpoint responses`: send `"store": false` (nothing kept).
    #[arg(long)]
    no_store: bool,
    /// Put rate limits in the path, far above the load (so none refuses): each key's
    /// `qps`/`qpm`/`tpm` and a tier limiting each team per model.
    #[arg(long)]
    limits: bool,
    /// Keep no request bodies (`retention.bodies_days = 0`); by default they are kept, as
    /// shipped.
    #[arg(long)]
    no_bodies: bool,
    /// Count the limits in this Redis (`redis://…`), shared as by several nodes, instead of in
    /// process. Implies `--limits`.
    #[arg(long)]
    redis_url: Option<String>,
    /// A PostgreSQL database to use instead of a temporary SQLite file (it should be empty:
    /// the benchmark migrates it and leaves its rows).
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Family {
    Chat,
    Responses,
    Completions,
    Embeddings,
    Images,
}

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU time used meanwhile by this process (the client, the mock upstream and tollgate) and
    /// by PostgreSQL's processes (when the run is on PostgreSQL).
    cpu: Cpu,
}

#[derive(Clone, Copy, Default)]
struct Cpu {
    process: Duration,
    database: Duration,
}

impl Cpu {
    fn now(postgres: bool) -> Cpu {
        Cpu {
            process: tollgate_bench::process_cpu().unwrap_or_default(),
            database: if postgres {
                tollgate_bench::processes_cpu("postgres").unwrap_or_default()
            } else {
                Duration::ZERO
            },
        }
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            process: self.process.saturating_sub(before.process),
            database: self.database.saturating_sub(before.database),
        }
    }
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }

    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Runs one after the other, as one.
    fn merge(runs: Vec<Run>) -> Run {
        let mut merged = Run {
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
            cpu: Cpu::default(),
        };
        for run in runs {
            merged.elapsed += run.elapsed;
            merged.latencies.extend(run.latencies);
            merged.cpu.process += run.cpu.process;
            merged.cpu.database += run.cpu.database;
        }
        merged.latencies.sort_unstable();
        merged
    }
}

async fn drive(
    client: &reqwest::Client,
    url: &str,
    keys: &[String],
    body: &serde_json::Value,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keys: Arc<[String]> = keys.into();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, keys, body, next) = (
            client.clone(),
            url.to_owned(),
            Arc::clone(&keys),
            body.clone(),
            Arc::clone(&next),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let sent = Instant::now();
                let mut request = client.post(&url).json(&body);
                if !keys.is_empty() {
                    request = request.bearer_auth(&keys[n % keys.len()]);
                }
                let response = request.send().await?;
                anyhow::ensure!(response.status().is_success(), "status {}", response.status());
                // Read the whole body: the last byte is what the client waits for.
                let _ = response.bytes().await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        elapsed,
        latencies,
        cpu: Cpu::default(),
    })
}

/// Drives `requests` completions of `model` through tollgate's gRPC API on `channel` (one
/// HTTP/2 connection, as an SDK client keeps), streamed or whole, `concurrency` at a time.
async fn drive_grpc(
    channel: &tonic::transport::Channel,
    keys: &[String],
    model: &str,
    stream: bool,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    use tollgate_grpc::proto;
    let request = proto::GetCompletionsRequest {
        model: model.to_owned(),
        messages: vec![proto::Message {
            role: proto::MessageRole::RoleUser as i32,
            content: vec![proto::Content {
                content: Some(proto::content::Content::Text("Say hello.".into())),
            }],
            ..proto::Message::default()
        }],
        n: Some(1),
        max_tokens: Some(256),
        ..proto::GetCompletionsRequest::default()
    };
    let authorizations = keys
        .iter()
        .map(|key| format!("Bearer {key}").parse())
        .collect::<Result<Vec<tonic::metadata::MetadataValue<_>>, _>>()?;
    let authorizations: Arc<[_]> = authorizations.into();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let mut client = proto::chat_client::ChatClient::new(channel.clone());
        let (request, authorizations, next) = (request.clone(), Arc::clone(&authorizations), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let sent = Instant::now();
                let mut call = tonic::Request::new(request.clone());
                call.metadata_mut()
                    .insert("authorization", authorizations[n % authorizations.len()].clone());
                if stream {
                    let mut chunks = client.get_completion_chunk(call).await?.into_inner();
                    // The last chunk (with the usage) is what the client waits for.
                    while chunks.message().await?.is_some() {}
                } else {
                    client.get_completion(call).await?;
                }
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(requests);
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(Run {
        elapsed,
        latencies,
        cpu: Cpu::default(),
    })
}

/// Where tollgate is called: REST at a URL, or gRPC on a channel.
enum Target<'a> {
    Rest(&'a str),
    Grpc(&'a tonic::transport::Channel),
}

/// Drives the load at tollgate over its surface.
async fn drive_tollgate(
    target: &Target<'_>,
    client: &reqwest::Client,
    keys: &[String],
    body: &serde_json::Value,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    match target {
        Target::Rest(url) => drive(client, url, keys, body, requests, concurrency).await,
        Target::Grpc(channel) => {
            let model = body["model"].as_str().unwrap_or_default();
            let stream = body["stream"].as_bool().unwrap_or(false);
            drive_grpc(channel, keys, model, stream, requests, concurrency).await
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.requests >= usize::from(args.rounds),
        "--requests must be at least --rounds (each turn sends requests / rounds)"
    );
    anyhow::ensure!(args.teams >= 1, "--teams must be at least 1");
    let upstream = tollgate_testkit::MockUpstream::start().await?;
    let dir = tempfile::tempdir()?;
    let database_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let mut config = tollgate_server::Config::for_test(database_url);
    config.connections.max_per_client = 4_096;
    let model = |price: i64| ModelConfig {
        base_url: Some(upstream.base_url.clone()),
        api_key: None,
        upstream_model: Some("mock-model".into()),
        max_concurrency: None,
        max_queue: None,
        queue_timeout_seconds: None,
        upstreams: vec![],
        aliases: vec![],
        prompt_price: Some(price / 5),
        cached_prompt_price: None,
        completion_price: Some(price),
        image_price: Some(2),
        web_search_price: 50_000_000,
        x_search_price: 50_000_000,
        server_side_tools: None,
        max_output_tokens: 16_384,
        endpoints: vec!["chat".into(), "completions".into(), "embeddings".into(), "image".into()],
        tokenizer: None,
        template_tokens_per_message: None,
        template_tokens_per_request: None,
    };
    let limits = args.limits || args.redis_url.is_some();
    if limits {
        config.rate_limits.tiers = vec![tollgate_server::config::TierConfig {
            min_spend_usd: "0".into(),
            rps: Some(1_000_000),
            rpm: Some(60_000_000),
            tpm: Some(u64::MAX / 4),
            models: std::collections::BTreeMap::new(),
        }];
    }
    config.redis_url = args.redis_url.clone().map(Into::into);
    // The operator's listener, to read the dropped bodies' counter at the end.
    config.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    if args.no_bodies {
        config.retention.bodies_days = 0;
    }
    anyhow::ensure!(
        !args.grpc || args.endpoint == Family::Chat,
        "--grpc loads chat completions (xAI's Chat service) only"
    );
    if args.grpc {
        config.grpc_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    config.models.insert("bench".into(), model(100_000));
    config.models.insert("bench-free".into(), model(0));
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = tollgate_server::start(&config, Arc::clone(&clock), std::future::pending()).await?;
    let services = tollgate_server::services(&config, &server.store, &clock)?;
    let payers = tollgate_bench::seed_payers(&services, args.teams, || tollgate_core_new_key(limits)).await?;
    let keys: Vec<String> = payers.iter().map(|payer| payer.secret.clone()).collect();

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()?;
    anyhow::ensure!(
        !(args.stream && matches!(args.endpoint, Family::Embeddings | Family::Images)),
        "embeddings and images are not streamed"
    );
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    let stream = args.stream;
    let chat_direct = json!({"model": "mock-model", "messages": messages, "stream": stream, "stream_options": {"include_usage": true}});
    let (path, direct_path, direct_body) = match args.endpoint {
        Family::Chat => ("/v1/chat/completions", "/chat/completions", chat_direct),
        Family::Responses => ("/v1/responses", "/chat/completions", chat_direct),
        Family::Completions => (
            "/v1/completions",
            "/completions",
            json!({"model": "mock-model", "prompt": "Say hello.", "max_tokens": 256, "stream": stream,
                "stream_options": {"include_usage": true}}),
        ),
        Family::Embeddings => (
            "/v1/embeddings",
            "/embeddings",
            json!({"model": "mock-model", "input": "Say hello."}),
        ),
        Family::Images => (
            "/v1/images/generations",
            "/images/generations",
            json!({"model": "mock-model", "prompt": "A lighthouse."}),
        ),
    };
    let direct_url = format!("{}{direct_path}", upstream.base_url);
    let tollgate_url = format!("http://{}{path}", server.addr);
    let channel = match server.grpc_addr {
        Some(addr) => Some(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .context("connecting to the gRPC listener")?,
        ),
        None => None,
    };
    let target = match &channel {
        Some(channel) => Target::Grpc(channel),
        None => Target::Rest(&tollgate_url),
    };
    let body = |model: &str| match args.endpoint {
        Family::Chat => json!({"model": model, "messages": messages, "stream": stream, "max_tokens": 256}),
        Family::Responses => json!({"model": model, "input": "Say hello.", "stream": stream, "max_output_tokens": 256,
            "store": !args.no_store}),
        Family::Completions => json!({"model": model, "prompt": "Say hello.", "stream": stream, "max_tokens": 256}),
        Family::Embeddings => json!({"model": model, "input": "Say hello."}),
        Family::Images => json!({"model": model, "prompt": "A lighthouse."}),
    };
    let (billed_body, free_body) = (body("bench"), body("bench-free"));

    let path = if args.grpc {
        if stream {
            "gRPC xai_api.Chat/GetCompletionChunk"
        } else {
            "gRPC xai_api.Chat/GetCompletion"
        }
    } else {
        path
    };
    println!(
        "tollgate-bench: {path}, {} requests, concurrency {}, {} answers, {}, {} team(s), limits {}, bodies {}, {} cores",
        args.requests,
        args.concurrency,
        if args.stream { "streamed" } else { "JSON" },
        if args.database_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        },
        args.teams,
        match (&args.redis_url, limits) {
            (Some(_), _) => "in Redis",
            (None, true) => "in process",
            (None, false) => "off",
        },
        if args.no_bodies { "not kept" } else { "kept" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    drive(&client, &direct_url, &[], &direct_body, args.warmup, args.concurrency)
        .await
        .context("warm-up")?;
    for body in [&free_body, &billed_body] {
        drive_tollgate(&target, &client, &keys, body, args.warmup, args.concurrency)
            .await
            .context("warm-up")?;
    }
    let direct = drive(&client, &direct_url, &[], &direct_body, args.requests, args.concurrency)
        .await
        .context("direct")?;
    // Alternate the two, so neither gets the warmer machine.
    let per_turn = args.requests / usize::from(args.rounds);
    let mut free = Vec::new();
    let mut billed = Vec::new();
    let postgres = args.database_url.is_some();
    for _ in 0..args.rounds {
        for (runs, body, what) in [
            (&mut free, &free_body, "tollgate, free model"),
            (&mut billed, &billed_body, "tollgate, billed model"),
        ] {
            let before = Cpu::now(postgres);
            let mut run = drive_tollgate(&target, &client, &keys, body, per_turn, args.concurrency)
                .await
                .context(what)?;
            run.cpu = Cpu::now(postgres).since(before);
            runs.push(run);
        }
    }
    let turns: Vec<String> = free
        .iter()
        .zip(&billed)
        .map(|(free, billed)| format!("{:+.1}%", (billed.rps() / free.rps() - 1.0) * 100.0))
        .collect();
    let (free, billed) = (Run::merge(free), Run::merge(billed));

    println!(
        "{:<18} {:>10} {:>10} {:>10} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    for (name, run) in [
        ("upstream", &direct),
        ("tollgate, no bill", &free),
        ("tollgate, billed", &billed),
    ] {
        println!(
            "{:<18} {:>10.0} {:>10.3} {:>10.3} {:>10.3}",
            name,
            run.rps(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            ms(*run.latencies.last().unwrap_or(&Duration::ZERO))
        );
    }
    for (name, run) in [("without billing", &free), ("with billing", &billed)] {
        println!(
            "added by tollgate {name}: p50 {:+.3} ms, p99 {:+.3} ms",
            ms(run.percentile(0.50)) - ms(direct.percentile(0.50)),
            ms(run.percentile(0.99)) - ms(direct.percentile(0.99))
        );
    }
    println!(
        "billing's cost: {:+.1}% req/s, p50 {:+.3} ms, p99 {:+.3} ms",
        (billed.rps() / free.rps() - 1.0) * 100.0,
        ms(billed.percentile(0.50)) - ms(free.percentile(0.50)),
        ms(billed.percentile(0.99)) - ms(free.percentile(0.99))
    );
    println!("billing's cost per turn: {}", turns.join(", "));
    // CPU per request moves less with the machine's speed than requests per second do, and
    // says where billing's cost lands: this process (tollgate, the client and the mock
    // upstream, the same for both models) or the database server.
    let per_request = |cpu: Duration, run: &Run| cpu.as_secs_f64() * 1e6 / run.latencies.len().max(1) as f64;
    for (name, run) in [("without billing", &free), ("with billing", &billed)] {
        let mut line = format!(
            "CPU per request {name}: {:.0} µs in this process",
            per_request(run.cpu.process, run)
        );
        if postgres {
            line += &format!(", {:.0} µs in PostgreSQL", per_request(run.cpu.database, run));
        }
        println!("{line}");
    }
    let mut stored = 0;
    for payer in &payers {
        stored += server.store.list_usage(payer.key.team_id, u32::MAX).await?.len();
    }
    let expected = 2 * per_turn * usize::from(args.rounds) + args.warmup * 2;
    println!("usage records stored: {stored} (expected {expected})");
    if let Some(operator) = server.operator_addr {
        let metrics = client
            .get(format!("http://{operator}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        let dropped = metrics
            .lines()
            .find_map(|line| line.strip_prefix("tollgate_request_bodies_dropped_total "))
            .unwrap_or("?");
        println!("request bodies dropped (not kept): {dropped}");
    }
    match server.store.verify_ledger().await? {
        None => println!("billing verify: every balance equals its entries, every charge its spend"),
        Some(mismatch) => anyhow::bail!("billing verify: {mismatch}"),
    }
    server.shutdown().await?;
    Ok(())
}

fn tollgate_core_new_key(limits: bool) -> tollgate_core::NewApiKey {
    tollgate_core::NewApiKey {
        name: "bench".into(),
        acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
        qps: limits.then_some(1_000_000),
        qpm: limits.then_some(60_000_000),
        tpm: limits.then_some(u64::MAX / 4),
        ..Default::default()
    }
}
