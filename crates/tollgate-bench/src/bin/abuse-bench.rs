//! `abuse-bench`: what an attacker can make one Tollgate node spend. Starts Tollgate in this
//! process (SQLite in a temporary directory), then
//!
//! 1. sends 500 concurrent sign-ins with wrong passwords, each from its own client address
//!    (`X-Forwarded-For` from a trusted proxy, the worst case for the per-address throttle), and
//! 2. opens 2,000 connections from one other address (127.0.0.2) that send half a request's
//!    headers and then nothing (slowloris), raising this process's open-file limit first,
//!
//! while probing `/healthz` every 100 ms from 127.0.0.1 on the public listener and on the
//! operator's listener. It prints the answers' statuses, how many probes answered within
//! 100 ms, and the process's resident memory (peak, and over the baseline). A measurement, not a
//! test: it asserts nothing. The attacker's own sockets count in the memory too (a few MB).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tollgate_domain::{Clock, SystemClock};

#[derive(Debug, Parser)]
#[command(about = "Measure what bad sign-ins and slow connections cost one Tollgate node")]
struct Args {
    /// Concurrent sign-ins with wrong passwords.
    #[arg(long, default_value_t = 500)]
    sign_ins: usize,
    /// Slow connections (half a request's headers, then nothing).
    #[arg(long, default_value_t = 2_000)]
    slow_connections: usize,
    /// Seconds to hold the slow connections open.
    #[arg(long, default_value_t = 5)]
    hold_seconds: u64,
}

/// Resident memory of this process now, in MiB (Linux), from `/proc/self/status`.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Samples RSS every 20 ms until stopped; the peak in MiB (as bits of an f64).
fn watch_rss(stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let now = rss_mib();
            if now > f64::from_bits(peak.load(Ordering::Relaxed)) {
                peak.store(now.to_bits(), Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Probes `url` every 100 ms until stopped: (answered within 100 ms, probes, slowest).
fn probe(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, usize, Duration)> {
    tokio::spawn(async move {
        // A fresh connection each time, as a load balancer's health check makes.
        let mut fast = 0;
        let mut total = 0;
        let mut slowest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let Ok(client) = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(2))
                .build()
            else {
                break;
            };
            let sent = Instant::now();
            let ok = client
                .get(&url)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success());
            let took = sent.elapsed();
            total += 1;
            if ok && took <= Duration::from_millis(100) {
                fast += 1;
            }
            slowest = slowest.max(if ok { took } else { Duration::from_secs(2) });
            tokio::time::sleep(Duration::from_millis(100).saturating_sub(took)).await;
        }
        (fast, total, slowest)
    })
}

struct Phase {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    watcher: tokio::task::JoinHandle<()>,
    public: tokio::task::JoinHandle<(usize, usize, Duration)>,
    operator: tokio::task::JoinHandle<(usize, usize, Duration)>,
}

impl Phase {
    fn start(public: &str, operator: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_mib().to_bits()));
        Self {
            watcher: watch_rss(Arc::clone(&stop), Arc::clone(&peak)),
            public: probe(format!("{public}/healthz"), Arc::clone(&stop)),
            operator: probe(format!("{operator}/healthz"), Arc::clone(&stop)),
            stop,
            peak,
        }
    }

    async fn report(self, baseline: f64) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.watcher.await?;
        let peak = f64::from_bits(self.peak.load(Ordering::Relaxed));
        println!(
            "  peak RSS {peak:.0} MiB ({:+.0} MiB over the {baseline:.0} MiB baseline)",
            peak - baseline
        );
        for (name, probe) in [("public", self.public), ("operator", self.operator)] {
            let (fast, total, slowest) = probe.await?;
            println!(
                "  /healthz on the {name} listener: {fast}/{total} answered within 100 ms (slowest {:.1} ms)",
                slowest.as_secs_f64() * 1000.0
            );
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let open_files = rlimit::increase_nofile_limit(u64::MAX)?;
    let dir = tempfile::tempdir()?;
    let mut config = tollgate_server::Config::for_test(format!("sqlite://{}", dir.path().join("abuse.db").display()));
    config.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.trusted_proxies = vec!["127.0.0.1".into()];
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let server = tollgate_server::start(&config, Arc::clone(&clock), std::future::pending()).await?;
    let public = format!("http://{}", server.addr);
    let operator = format!(
        "http://{}",
        server
            .operator_addr
            .ok_or_else(|| anyhow::anyhow!("metrics_listen is set, so there is an operator listener"))?
    );
    println!(
        "abuse-bench: {} cores, open-file limit {open_files}, connections.max {} per client {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        config.connections.max,
        config.connections.max_per_client
    );
    let baseline = rss_mib();

    println!(
        "{} concurrent sign-ins with wrong passwords, each from its own address:",
        args.sign_ins
    );
    let phase = Phase::start(&public, &operator);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.sign_ins)
        .build()?;
    let started = Instant::now();
    let mut sign_ins = tokio::task::JoinSet::new();
    for i in 0..args.sign_ins {
        let (client, url) = (client.clone(), format!("{public}/api/auth/sign-in"));
        sign_ins.spawn(async move {
            client
                .post(url)
                .header("x-forwarded-for", format!("198.18.{}.{}", i / 250, i % 250 + 1))
                .json(&json!({"email": format!("nobody{i}@example.com"), "password": "not the password"}))
                .send()
                .await
                .map(|response| response.status().as_u16())
        });
    }
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = sign_ins.join_next().await {
        let status = done?.map_or_else(|error| format!("error ({error})"), |s| s.to_string());
        *statuses.entry(status).or_default() += 1;
    }
    println!("  answers {statuses:?} in {:.2} s", started.elapsed().as_secs_f64());
    phase.report(baseline).await?;

    println!(
        "{} slow connections from 127.0.0.2 (half the headers, then nothing), held {} s:",
        args.slow_connections, args.hold_seconds
    );
    let phase = Phase::start(&public, &operator);
    let mut slow = Vec::with_capacity(args.slow_connections);
    let mut refused_at_connect = 0;
    for _ in 0..args.slow_connections {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind("127.0.0.2:0".parse()?)?;
        match socket.connect(server.addr).await {
            Ok(mut tcp) => {
                use tokio::io::AsyncWriteExt as _;
                let _ = tcp
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\nX-Slow: ")
                    .await;
                slow.push(tcp);
            }
            Err(_) => refused_at_connect += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    // How many the server still holds open: a closed one reads as end of file at once.
    let mut held = 0;
    for tcp in &mut slow {
        use tokio::io::AsyncReadExt as _;
        let mut byte = [0_u8; 1];
        if let Err(_elapsed) = tokio::time::timeout(Duration::from_millis(1), tcp.read(&mut byte)).await {
            held += 1;
        }
    }
    println!(
        "  the server holds {held} of them open ({} closed by it, {refused_at_connect} refused at connect)",
        slow.len() - held
    );
    phase.report(baseline).await?;
    drop(slow);
    server.shutdown().await?;
    Ok(())
}
