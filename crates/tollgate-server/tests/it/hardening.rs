//! What an attacker tries against input and resources: names with control characters, limits
//! beyond int64, ACL floods, invented HTTP methods. Each answer is a clear 4xx in the surface's
//! shape, never a 500, and nothing is written.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_core::{AccountError, AccountService, PasswordHasher, PasswordHashing};
use tollgate_domain::{Actor, RequestContext};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, on_both_backends};

on_both_backends!(
    bad_names_and_limits_are_refused,
    acl_floods_are_refused,
    concurrent_guesses_are_counted_before_hashing,
    password_hashing_is_bounded,
    reauthentication_is_throttled_and_audited,
    estimates_count_every_generated_text,
    a_client_that_hangs_up_is_still_charged,
    reads_are_coalesced_but_log_reads_are_not,
);

/// A hasher that counts and can hold its work: `hash` is instant, `verify` waits while the gate
/// is shut. Its PHC strings are `test$<password>`.
#[derive(Default)]
struct GatedHasher {
    verified: AtomicUsize,
    running: AtomicUsize,
    max_running: AtomicUsize,
    shut: Mutex<bool>,
    opened: Condvar,
}

impl GatedHasher {
    fn shut(&self) {
        *self.shut.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.shut.lock().unwrap() = false;
        self.opened.notify_all();
    }
}

impl PasswordHasher for GatedHasher {
    fn hash(&self, password: &str) -> anyhow::Result<String> {
        Ok(format!("test${password}"))
    }

    fn verify(&self, password: &str, phc: &str) -> anyhow::Result<bool> {
        self.verified.fetch_add(1, Ordering::SeqCst);
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(running, Ordering::SeqCst);
        let mut shut = self.shut.lock().unwrap();
        while *shut {
            shut = self.opened.wait(shut).unwrap();
        }
        drop(shut);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(phc == format!("test${password}"))
    }
}

use crate::teams::PASSWORD;

/// The accounts service over `app`'s store, hashing with `hasher` through `workers` running and
/// `queue` waiting slots; with an account `victim@example.com`.
async fn accounts_with(app: &TestApp, hasher: &Arc<GatedHasher>, workers: usize, queue: usize) -> AccountService {
    let accounts = app
        .services()
        .accounts
        .with_password_hashing(PasswordHashing::new(hasher.clone(), workers, queue));
    accounts
        .create_user(
            "victim@example.com",
            "Victim",
            PASSWORD,
            Actor::Operator,
            &RequestContext::default(),
        )
        .await
        .unwrap();
    accounts
}

fn from(ip: &str) -> RequestContext {
    RequestContext {
        ip: Some(ip.to_owned()),
        ..RequestContext::default()
    }
}

/// 60 wrong passwords at once against one account: the throttle counts each before hashing, so
/// at most 10 are evaluated and the rest are refused without work.
async fn concurrent_guesses_are_counted_before_hashing(db: TestDb) {
    let app = TestApp::new(db).await;
    let hasher = Arc::new(GatedHasher::default());
    let accounts = accounts_with(&app, &hasher, 64, 64).await;
    hasher.shut();
    let mut guesses = tokio::task::JoinSet::new();
    for i in 0..60 {
        let accounts = accounts.clone();
        guesses.spawn(async move {
            accounts
                .sign_in(
                    "victim@example.com",
                    &format!("guess {i}"),
                    &from(&format!("198.51.100.{i}")),
                )
                .await
        });
    }
    // Those refused answer at once, while the admitted ones are held in the hasher.
    let mut throttled = 0;
    while throttled < 50 {
        match guesses.join_next().await.unwrap().unwrap() {
            Err(AccountError::Throttled { .. }) => throttled += 1,
            other => panic!("only refusals can answer while the gate is shut: {other:?}"),
        }
    }
    hasher.open();
    while let Some(result) = guesses.join_next().await {
        assert!(matches!(result.unwrap(), Err(AccountError::BadCredentials)));
    }
    assert_eq!(hasher.verified.load(Ordering::SeqCst), 10);
    // The right password is refused too now: the lockout holds.
    let locked = accounts
        .sign_in("victim@example.com", PASSWORD, &from("203.0.113.1"))
        .await;
    assert!(matches!(locked, Err(AccountError::Throttled { .. })), "{locked:?}");
}

/// Many sign-ins at once: never more hashes running than workers, a bounded queue, and the rest
/// refused at once as busy (a 503 with Retry-After at the edge).
async fn password_hashing_is_bounded(db: TestDb) {
    let app = TestApp::new(db).await;
    let hasher = Arc::new(GatedHasher::default());
    let accounts = accounts_with(&app, &hasher, 2, 2).await;
    // The dummy hash (unknown addresses) is made once, before the gate shuts.
    let _ = accounts.sign_in("nobody@example.com", "x", &from("192.0.2.200")).await;
    hasher.shut();
    let mut sign_ins = tokio::task::JoinSet::new();
    for i in 0..10 {
        let accounts = accounts.clone();
        sign_ins.spawn(async move {
            accounts
                .sign_in(&format!("user{i}@example.com"), "wrong", &from(&format!("192.0.2.{i}")))
                .await
        });
    }
    let mut busy = 0;
    while busy < 6 {
        match sign_ins.join_next().await.unwrap().unwrap() {
            Err(AccountError::Busy) => busy += 1,
            other => panic!("only refusals can answer while the gate is shut: {other:?}"),
        }
    }
    hasher.open();
    // (A worker frees its queue slot as it takes a job, so a burst may be refused a little
    // earlier than workers + queue; never later.)
    while let Some(result) = sign_ins.join_next().await {
        match result.unwrap() {
            Err(AccountError::Busy) => busy += 1,
            Err(AccountError::BadCredentials) => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(busy >= 6, "{busy}");
    assert!(hasher.max_running.load(Ordering::SeqCst) <= 2);
    assert_eq!(hasher.verified.load(Ordering::SeqCst), 1 + (10 - busy));
}

/// Confirming a sensitive change with the password goes through the sign-in throttle, and a
/// wrong password is on the team's record.
async fn reauthentication_is_throttled_and_audited(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let totp = |password: &'static str| {
        let (app, ada) = (&app, &ada);
        async move {
            app.call(
                Method::POST,
                "/api/account/mfa/totp",
                ada,
                Some(json!({"password": password})),
            )
            .await
        }
    };
    for _ in 0..10 {
        assert_eq!(totp("wrong").await.status(), StatusCode::UNAUTHORIZED);
    }
    let refused = totp(PASSWORD).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let (_, me) = app.call_json(Method::GET, "/api/me", &ada, None).await;
    let team = me["teams"][0]["teamId"].as_str().unwrap();
    let (_, log) = app
        .call_json(Method::GET, &format!("/api/teams/{team}/audit/events"), &ada, None)
        .await;
    let failures = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "Reauthenticate")
        .count();
    assert_eq!(failures, 10, "{log}");
}

async fn management(app: &TestApp, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
    let response = app
        .client
        .request(method, app.url(path))
        .bearer_auth(&app.management_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap_or(Value::Null))
}

async fn bad_names_and_limits_are_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    let keys = format!("/auth/teams/{}/api-keys", app.team.id);
    let acls = json!(["api-key:endpoint:*", "api-key:model:*"]);

    // NUL and other control characters: 400 on both backends (PostgreSQL refuses NUL in text).
    for name in ["nul\0here", "escape\u{1b}[2J", "new\nline"] {
        let (status, body) = management(&app, Method::POST, &keys, json!({"name": name, "acls": acls})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("control characters"), "{body}");
    }
    let response = app
        .client
        .post(app.url("/api/auth/sign-up"))
        .json(&json!({"email": "nul@example.com", "password": "a sturdy passphrase for tests", "name": "Ada\0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("control characters"), "{body}");

    // tpm at and beyond 2^63: refused on create and on update, as xAI's int64.
    let (status, body) = management(
        &app,
        Method::POST,
        &keys,
        json!({"name": "big", "acls": acls, "tpm": 9_223_372_036_854_775_808_u64}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("tpm must be at most"),
        "{body}"
    );
    let (status, created) = management(
        &app,
        Method::POST,
        &keys,
        json!({"name": "max", "acls": acls, "tpm": i64::MAX}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["apiKeyId"].as_str().unwrap();
    for tpm in ["9223372036854775808", "18446744073709551615"] {
        let (status, body) = management(
            &app,
            Method::PUT,
            &format!("/auth/api-keys/{id}"),
            json!({"apiKey": {"tpm": tpm}, "fieldMask": "tpm"}),
        )
        .await;
        assert!(status.is_client_error(), "{tpm}: {status} {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let (status, body) = management(
        &app,
        Method::PUT,
        &format!("/auth/api-keys/{id}"),
        json!({"apiKey": {"name": "x\0"}, "fieldMask": "name"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, key) = management(&app, Method::GET, &format!("/auth/api-keys/{id}"), Value::Null).await;
    assert_eq!(key["name"], "max", "nothing half-written");
    assert_eq!(key["tpm"], i64::MAX.to_string());
}

async fn acl_floods_are_refused(db: TestDb) {
    let app = TestApp::new(db).await;
    let keys = format!("/auth/teams/{}/api-keys", app.team.id);
    let flood: Vec<String> = (0..150_000).map(|i| format!("api-key:model:m{i}")).collect();
    let (status, body) = management(&app, Method::POST, &keys, json!({"name": "flood", "acls": flood})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 100 ACLs"), "{body}");
    // At the cap, with duplicates kept once.
    let mut hundred: Vec<String> = (0..100).map(|i| format!("api-key:model:m{i}")).collect();
    hundred[99] = "api-key:model:m0".into();
    let (status, created) = management(&app, Method::POST, &keys, json!({"name": "cap", "acls": hundred})).await;
    assert_eq!(status, StatusCode::OK, "{created}");
    assert_eq!(created["aclStrings"].as_array().unwrap().len(), 99);
}

/// A body over the limit is answered in the surface's error shape on every route, raw-body ones
/// (the signed webhook, key rotation) included.
#[tokio::test]
async fn oversized_bodies_are_answered_in_the_error_shape() {
    let app = TestApp::new(TestDb::sqlite().await).await;
    let key = app.create_api_key(json!({"name": "k"})).await;
    let huge = "x".repeat(app.config.max_body_bytes + 1);
    for path in [
        "/webhooks/github/secret-scanning".to_owned(),
        format!("/auth/api-keys/{}/rotate", key["apiKeyId"].as_str().unwrap()),
        format!("/auth/teams/{}/api-keys", app.team.id),
    ] {
        let response = app
            .client
            .post(app.url(&path))
            .bearer_auth(&app.management_key)
            .header("content-type", "application/json")
            .body(huge.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["code"].is_string() && body["error"].is_string(), "{path}: {body}");
    }
}

/// An inference body above axum's default 2 MiB but within `max_body_bytes` is read, not
/// refused: the inference extractor keeps the configured limit while it keeps the bytes.
#[tokio::test]
async fn large_inference_bodies_within_the_limit_are_read() {
    let app = TestApp::new(TestDb::sqlite().await).await;
    let key = app.api_key().await;
    let long = "word ".repeat(700_000);
    for path in [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/completions",
        "/v1/embeddings",
    ] {
        let body = match path {
            "/v1/chat/completions" => {
                json!({"model": "no-such-model", "messages": [{"role": "user", "content": long}]})
            }
            "/v1/responses" => json!({"model": "no-such-model", "input": long}),
            "/v1/completions" => json!({"model": "no-such-model", "prompt": long}),
            _ => json!({"model": "no-such-model", "input": long}),
        };
        let response = app.post(path, &key, body).await;
        assert_eq!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{path}: read, then the model is unknown"
        );
    }
}

/// Invented methods share one `other` label: the metric's label sets stay bounded.
#[tokio::test]
async fn metric_labels_are_bounded() {
    let app = TestApp::new(TestDb::sqlite().await).await;
    for i in 0..20 {
        let method = Method::from_bytes(format!("BOGUS{i}").as_bytes()).unwrap();
        let status = app
            .client
            .request(method, app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status.is_client_error(), "{status}");
    }
    let metrics = app.metrics().await;
    assert!(!metrics.contains("BOGUS"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}

/// Without upstream usage, the estimate counts all generated text: 40,000 characters of
/// tool-call arguments are thousands of completion tokens (by the model's tokenizer for a whole
/// answer, about four characters a token for a stream), not 0.
async fn estimates_count_every_generated_text(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    app.upstream.omit_usage(true);
    app.upstream.call_tool_with(Some("x".repeat(40_000)));
    let answer: Value = app.hello(&key).await.json().await.unwrap();
    let cl100k = tollgate_gateway::tokenizer::Tokenizer::named("cl100k_base").unwrap();
    let by_tokenizer = cl100k.tokenize(&"x".repeat(40_000)).len() + cl100k.tokenize("lookup").len();
    assert_eq!(answer["usage"]["completion_tokens"], by_tokenizer, "{answer}");
    assert!(by_tokenizer > 4_000);
    let lookup = "lookup".len() as u64;

    let streamed = app.stream_chat(&key).await.text().await.unwrap();
    assert!(streamed.ends_with("data: [DONE]\n\n"), "{streamed}");
    let records = app.store().list_usage(app.team.id, 10).await.unwrap();
    let record = records.iter().find(|r| r.streamed).unwrap();
    let words = tollgate_testkit::ANSWER_WORDS.concat().len() as u64;
    assert!(record.estimated);
    assert_eq!(record.usage.completion_tokens, (words + 40_000 + lookup).div_ceil(4));
}

/// A non-streaming client that hangs up before the answer is still charged for what the
/// upstream produced: settling does not depend on the client staying.
async fn a_client_that_hangs_up_is_still_charged(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let release = app.upstream.hold_answers();
    let request = app
        .client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": crate::util::MODEL, "messages": crate::util::user_message()}))
        .send();
    let client = tokio::spawn(request);
    // Wait (bounded) until the upstream has the request, then hang up.
    for _ in 0..500 {
        if !app.upstream.requests().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.upstream.requests().len(), 1);
    client.abort();
    let _ = client.await;
    let answered = app.upstream.answered();
    release.notify_one();
    answered.await;
    // The settle finishes after the upstream's answer: wait for it (bounded).
    let mut records = Vec::new();
    for _ in 0..500 {
        records = app.store().list_usage(app.team.id, 10).await.unwrap();
        if !records.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(records.len(), 1, "charged although the client left");
    assert_eq!(records[0].cost.get(), crate::util::expected_cost());
}

/// Reading in a loop cannot grow the append-only log: one read event of a kind (actor, action,
/// target) a minute. Every read of the audit log itself is still recorded.
async fn reads_are_coalesced_but_log_reads_are_not(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app.create_api_key(json!({"name": "k"})).await;
    let key_path = format!("/auth/api-keys/{}", created["apiKeyId"].as_str().unwrap());
    let list_path = format!("/auth/teams/{}/api-keys", app.team.id);
    let (other_team, _) = app.other_team("other@example.com").await;
    let foreign = format!("/auth/teams/{other_team}/api-keys", other_team = other_team.id);
    let get = |path: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url(&path))
                .bearer_auth(&app.management_key)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..20 {
        assert_eq!(get(key_path.clone()).await, StatusCode::OK);
        assert_eq!(get(list_path.clone()).await, StatusCode::OK);
        assert!(get(foreign.clone()).await.is_client_error());
    }
    let log_path = format!("/audit/teams/{}/events?pageSize=100", app.team.id);
    let count = |log: &Value, action: &str| {
        log["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    let log = app.get_json(&log_path, &app.management_key).await;
    assert_eq!(count(&log, "GetApiKey"), 1, "{log}");
    assert_eq!(count(&log, "ListApiKeys"), 2, "one success and one refusal: {log}");
    app.get_json(&log_path, &app.management_key).await;
    let log = app.get_json(&log_path, &app.management_key).await;
    assert_eq!(
        count(&log, "ListAuditEvents"),
        2,
        "the log's own reads are each recorded"
    );

    // A minute later, a read is recorded again.
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(get(key_path.clone()).await, StatusCode::OK);
    let log = app.get_json(&log_path, &app.management_key).await;
    assert_eq!(count(&log, "GetApiKey"), 2);
}

/// A server whose public listener has these connection limits.
async fn app_with_connections(max: usize, per_client: usize, header_timeout: u64, trust_loopback: bool) -> TestApp {
    let db = TestDb::sqlite().await;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.connections.max = max;
    config.connections.max_per_client = per_client;
    config.connections.header_read_timeout_seconds = header_timeout;
    if trust_loopback {
        config.trusted_proxies = vec!["127.0.0.1".into()];
    }
    TestApp::with_config(db, upstream, config).await
}

/// Sends a whole `GET /healthz` on a new connection; the answer's bytes (none if the server
/// closed the connection without answering).
async fn healthz_on_new_connection(app: &TestApp) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(app.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    answer
}

/// Until `check` holds, bounded: the server notices closed sockets as they close.
async fn eventually(mut check: impl AsyncFnMut() -> bool) -> bool {
    for _ in 0..200 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}

/// A slowloris client (headers trickled, never finished) is cut off once the header read timeout
/// passes, here set to 1 s.
#[tokio::test]
async fn unfinished_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = app_with_connections(100, 100, 1, false).await;
    let mut slow = tokio::net::TcpStream::connect(app.server.as_ref().unwrap().addr)
        .await
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: tol").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server closes the connection");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    // A well-behaved client is served meanwhile.
    assert!(String::from_utf8_lossy(&healthz_on_new_connection(&app).await).starts_with("HTTP/1.1 200"));
}

/// One client address holds at most `max_per_client` connections; beyond, new ones are closed
/// unanswered, and a slot frees when one of its connections closes.
#[tokio::test]
async fn one_client_cannot_hold_every_connection() {
    let app = app_with_connections(1000, 20, 60, false).await;
    let addr = app.server.as_ref().unwrap().addr;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    assert!(
        eventually(async || healthz_on_new_connection(&app).await.is_empty()).await,
        "the 21st connection is closed unanswered"
    );
    idle.pop();
    assert!(
        eventually(async || String::from_utf8_lossy(&healthz_on_new_connection(&app).await).starts_with("HTTP/1.1 200"))
            .await
    );
    // The operator's listener answers whatever the public one is doing.
    let operator = app.server.as_ref().unwrap().operator_addr.unwrap();
    let health = app
        .client
        .get(format!("http://{operator}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// All connections together: at most `connections.max`; a trusted proxy is exempt from the
/// per-client cap (its clients share its address), not from the global one.
#[tokio::test]
async fn the_global_cap_holds_for_trusted_proxies_too() {
    let app = app_with_connections(10, 2, 60, true).await;
    let addr = app.server.as_ref().unwrap().addr;
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    assert!(eventually(async || healthz_on_new_connection(&app).await.is_empty()).await);
    drop(idle);
    assert!(
        eventually(async || String::from_utf8_lossy(&healthz_on_new_connection(&app).await).starts_with("HTTP/1.1 200"))
            .await
    );
}
