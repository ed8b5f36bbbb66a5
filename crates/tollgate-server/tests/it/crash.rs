//! Durable before done, across crashes: the built `tollgate` binary serves load and is killed
//! with SIGKILL at seeded random moments, over and over. Every request a client saw complete
//! is charged exactly once; a request cut off by a kill is charged at most once, and only with
//! its spend (same transaction); afterwards ledger, usage rows and balances agree, and the
//! killed nodes' credit leases expire back to the team.
//!
//! `CRASH_SEED=n` replays a run; `CRASH_KILLS=n` changes how many kills (default 20).

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tollgate_domain::{Actor, RequestContext, Ticks};
use tollgate_store::testsuite::TestDb;

use crate::util::{COMPLETION_PRICE, MODEL, PROMPT_PRICE, TestApp, UPSTREAM_MODEL, on_both_backends, user_message};

on_both_backends!(sigkill_under_load_never_loses_or_doubles_a_charge);

/// A small deterministic generator (xorshift64*): the kill moments replay from the seed.
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

#[derive(Default)]
struct Seen {
    /// Requests whose answer the client read to the end (`[DONE]` or the whole JSON body).
    complete: Vec<String>,
    /// Requests the client got an id for, then lost the connection.
    cut: Vec<String>,
    /// Requests that failed before any answer: refused at connect, or sent and cut off before
    /// the headers (then the client cannot know the id, and the request may have been charged).
    unanswered: usize,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config_file(app: &TestApp, dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let path = dir.join(format!("tollgate-{port}.toml"));
    let key = tollgate_domain::AuditChainKey::from_bytes([42; 32]).to_hex();
    let text = format!(
        r#"database_url = "{database}"
listen = "127.0.0.1:{port}"
log_filter = "error"
shutdown_grace_seconds = 1

[audit]
key = "{key}"

[billing]
max_request_seconds = 2
lease_seconds = 3

[models.{MODEL}]
base_url = "{base}"
upstream_model = "{UPSTREAM_MODEL}"
prompt_price = {PROMPT_PRICE}
completion_price = {COMPLETION_PRICE}
"#,
        database = app.config.database_url,
        base = app.upstream.base_url,
    );
    std::fs::write(&path, text).unwrap();
    path
}

async fn wait_ready(client: &reqwest::Client, base: &str, key: &str, child: &mut Child) {
    for _ in 0..600 {
        if let Ok(response) = client.get(format!("{base}/v1/models")).bearer_auth(key).send().await {
            if response.status().is_success() {
                return;
            }
        }
        assert!(child.try_wait().unwrap().is_none(), "the server exited at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not start");
}

/// One client: requests (streaming every other one) until `stop`, noting what it saw.
async fn client_loop(
    client: reqwest::Client,
    base: String,
    key: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let stream = n % 2 == 0;
        let body = json!({"model": MODEL, "messages": user_message(), "max_tokens": 50, "stream": stream});
        let Ok(response) = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
        else {
            seen.lock().unwrap().unanswered += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let status = response.status();
        let Some(id) = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
        else {
            continue;
        };
        assert!(
            status.is_success(),
            "ample credit, so nothing is refused: {status} {:?}",
            response.text().await
        );
        let complete = if stream {
            let mut response = response;
            let mut text = String::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
                    Ok(None) => break text.contains("data: [DONE]"),
                    Err(_) => break false,
                }
            }
        } else {
            response
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|answer| answer["usage"]["cost_in_usd_ticks"].is_i64())
        };
        let mut seen = seen.lock().unwrap();
        if complete {
            seen.complete.push(id);
        } else {
            seen.cut.push(id);
        }
    }
}

async fn sigkill_under_load_never_loses_or_doubles_a_charge(db: TestDb) {
    let app = TestApp::prepaid_only(db).await;
    let key = app.api_key().await;
    let credit = Ticks::new(1_000 * 10_000_000_000);
    app.services()
        .ledger
        .grant(
            app.team.id,
            credit,
            "crash test",
            None,
            Actor::Operator,
            &RequestContext::default(),
        )
        .await
        .unwrap();
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_CAFE);
    let kills: usize = std::env::var("CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("crash test: seed {seed}, {kills} kills");
    let mut random = Seeded(seed);
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));

    for _ in 0..kills {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve"])
            .env("TOLLGATE_CONFIG", config_file(&app, dir.path(), port))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_ready(&client, &base, &key, &mut child).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|_| {
                tokio::spawn(client_loop(
                    client.clone(),
                    base.clone(),
                    key.clone(),
                    Arc::clone(&stop),
                    Arc::clone(&seen),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300 + random.below(2_400))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::SeqCst);
        for client in clients {
            client.await.unwrap();
        }
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let usage = app.store().list_usage(app.team.id, 1_000_000).await.unwrap();
    let charged: HashSet<String> = usage.iter().map(|record| record.request_id.to_string()).collect();
    assert_eq!(charged.len(), usage.len(), "one usage row per request");
    eprintln!(
        "crash test: {} complete, {} cut off, {} unanswered, {} charged",
        seen.complete.len(),
        seen.cut.len(),
        seen.unanswered,
        usage.len()
    );
    assert!(seen.complete.len() >= kills, "load ran between the kills");
    for id in &seen.complete {
        assert!(charged.contains(id), "request {id} completed but was not charged");
    }
    // A charge the client cannot name belongs to a request cut off before its headers: at
    // most one each.
    let known: HashSet<&String> = seen.complete.iter().chain(&seen.cut).collect();
    let unnamed = charged.iter().filter(|id| !known.contains(id)).count();
    assert!(
        unnamed <= seen.unanswered,
        "{unnamed} charges for {} requests without an answer",
        seen.unanswered
    );
    // Each charge is its spend, to the tick (verify matches every usage row to its entries),
    // and the balance is the credit less exactly what was charged.
    assert_eq!(app.store().verify_ledger().await.unwrap(), None);
    let spent: i64 = usage.iter().map(|record| record.cost.get()).sum();
    let balance = app.store().balance(app.team.id).await.unwrap();
    assert_eq!(balance.prepaid, Ticks::new(credit.get() - spent));
    // The killed nodes' leases expire (3 s on the database's clock) and their credit is the
    // team's again.
    let expired = crate::credit::within(10.0, || async {
        app.store().leased(app.team.id).await.unwrap() == Ticks::ZERO
    });
    assert!(expired.await, "expired leases lend nothing");
    app.finish().await;
}
