//! `tollgate-bench`: starts the mock upstream and a real tollgate (SQLite in a temporary
//! directory), drives the same load at the upstream directly and through tollgate, and reports
//! requests/s and the latency tollgate adds. A measurement, not a test: it asserts nothing
//! about speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use tollgate_domain::{Actor, Clock, RequestContext, SystemClock};
use tollgate_server::config::ModelConfig;

#[derive(Debug, Parser)]
#[command(about = "Benchmark tollgate's /v1/chat/completions against the upstream called directly")]
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
    /// Requests per run sent first and not measured.
    #[arg(long, default_value_t = 1_000)]
    warmup: usize,
}

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index.min(self.latencies.len() - 1)]
    }

    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

async fn drive(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &serde_json::Value,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, key, body, next) = (
            client.clone(),
            url.to_owned(),
            key.map(str::to_owned),
            body.clone(),
            Arc::clone(&next),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let sent = Instant::now();
                let mut request = client.post(&url).json(&body);
                if let Some(key) = &key {
                    request = request.bearer_auth(key);
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
    Ok(Run { elapsed, latencies })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let upstream = tollgate_testkit::MockUpstream::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = tollgate_server::Config::for_test(format!("sqlite://{}", dir.path().join("bench.db").display()));
    config.models.insert(
        "bench".into(),
        ModelConfig {
            base_url: upstream.base_url.clone(),
            api_key: None,
            upstream_model: Some("mock-model".into()),
            aliases: vec![],
            prompt_price: Some(20_000),
            cached_prompt_price: None,
            completion_price: Some(100_000),
            max_output_tokens: 16_384,
        },
    );
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = tollgate_server::start(&config, Arc::clone(&clock), std::future::pending()).await?;
    let services = tollgate_server::services(&config, &server.store, &clock)?;
    let (_, team) = services
        .accounts
        .create_user(
            "bench@example.com",
            "Bench",
            "benchmark password 123",
            Actor::Operator,
            &RequestContext::default(),
        )
        .await?;
    let (management_key, _) = services
        .keys
        .create_management_key(team.id, "bench", Actor::Operator, None, &RequestContext::default())
        .await?;
    let (_, key) = services
        .keys
        .create_api_key(
            &management_key.into(),
            team.id,
            tollgate_core_new_key(),
            &RequestContext::default(),
        )
        .await?;
    let key = key.expose().to_owned();

    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(1024)
        .build()?;
    let messages = json!([{"role": "user", "content": "Say hello."}]);
    let direct_url = format!("{}/chat/completions", upstream.base_url);
    let tollgate_url = format!("http://{}/v1/chat/completions", server.addr);
    let direct_body = json!({"model": "mock-model", "messages": messages, "stream": args.stream, "stream_options": {"include_usage": true}});
    let tollgate_body = json!({"model": "bench", "messages": messages, "stream": args.stream});

    println!(
        "tollgate-bench: {} requests, concurrency {}, {} answers, SQLite, {} cores",
        args.requests,
        args.concurrency,
        if args.stream { "streamed" } else { "JSON" },
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    drive(&client, &direct_url, None, &direct_body, args.warmup, args.concurrency)
        .await
        .context("warm-up, direct")?;
    drive(
        &client,
        &tollgate_url,
        Some(&key),
        &tollgate_body,
        args.warmup,
        args.concurrency,
    )
    .await
    .context("warm-up, tollgate")?;
    let direct = drive(
        &client,
        &direct_url,
        None,
        &direct_body,
        args.requests,
        args.concurrency,
    )
    .await
    .context("direct")?;
    let through = drive(
        &client,
        &tollgate_url,
        Some(&key),
        &tollgate_body,
        args.requests,
        args.concurrency,
    )
    .await
    .context("tollgate")?;

    println!(
        "{:<10} {:>10} {:>10} {:>10} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "max ms"
    );
    for (name, run) in [("upstream", &direct), ("tollgate", &through)] {
        println!(
            "{:<10} {:>10.0} {:>10.3} {:>10.3} {:>10.3}",
            name,
            run.rps(),
            ms(run.percentile(0.50)),
            ms(run.percentile(0.99)),
            ms(*run.latencies.last().unwrap_or(&Duration::ZERO))
        );
    }
    println!(
        "added by tollgate: p50 {:+.3} ms, p99 {:+.3} ms",
        ms(through.percentile(0.50)) - ms(direct.percentile(0.50)),
        ms(through.percentile(0.99)) - ms(direct.percentile(0.99))
    );
    let stored = server.store.list_usage(team.id, u32::MAX).await?.len();
    println!(
        "usage records stored: {stored} (expected {})",
        args.requests + args.warmup
    );
    server.shutdown().await?;
    Ok(())
}

fn tollgate_core_new_key() -> tollgate_core::NewApiKey {
    tollgate_core::NewApiKey {
        name: "bench".into(),
        acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
        ..Default::default()
    }
}
