//! Rate limits per team and model by tier, and limits shared by nodes through a real Redis
//! (a private `redis-server` on a free port per test, killed for the fallback; the shared one
//! on 6379 is never touched).

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::json;
use tollgate_domain::{Actor, AuditAction, AuditEvent, Clock as _, RequestContext, Ticks};
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, assert_xai_error, on_both_backends, user_message};

on_both_backends!(
    tiers_limit_each_team_per_model,
    limits_are_shared_across_nodes_through_redis
);

const EXHAUSTED: &str = "Some resource has been exhausted";

fn tier(min_usd: &str, rpm: Option<u32>, tpm: Option<u64>) -> tollgate_server::config::TierConfig {
    tollgate_server::config::TierConfig {
        min_spend_usd: min_usd.into(),
        rps: None,
        rpm,
        tpm,
        models: std::collections::BTreeMap::new(),
    }
}

/// A purchase of `usd` by the team, as the payment provider's webhook records it.
async fn purchase(app: &TestApp, team: tollgate_domain::TeamId, usd: i64) {
    let now = app.clock.now();
    let id = uuid::Uuid::now_v7();
    let entry = tollgate_domain::LedgerEntry {
        id,
        team_id: team,
        kind: tollgate_domain::EntryKind::Purchase,
        bucket: tollgate_domain::Bucket::Prepaid,
        amount: Ticks::new(usd * Ticks::PER_USD),
        idempotency_key: format!("test-purchase:{id}"),
        lot_id: None,
        expires_at: None,
        reason: Some("test purchase".into()),
        created_at: now,
    };
    let audit = AuditEvent::success(
        now,
        Some(team),
        Actor::Operator,
        AuditAction::TopUpCredits,
        "bought".into(),
        None,
        &RequestContext::default(),
    );
    assert!(app.store().append_ledger_entry(&entry, &audit).await.unwrap());
}

/// Teams are limited per model by their tier: xAI's 429 wording naming the team and model, the
/// `x-ratelimit-*` headers of the tightest limit, `retry-after`; other teams unaffected; a
/// purchase raises the tier (read again within a minute), which never goes down; the operator
/// pins a tier; tokens count against the tier's tokens per minute.
async fn tiers_limit_each_team_per_model(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut middle = tier("50", Some(5), None);
    middle.models.insert(
        MODEL.into(),
        tollgate_server::config::TierLimitsConfig {
            rps: None,
            rpm: Some(3),
            tpm: None,
        },
    );
    let tokens = tollgate_testkit::PROMPT_TOKENS + tollgate_testkit::COMPLETION_TOKENS;
    config.rate_limits.tiers = vec![tier("0", Some(2), None), middle, tier("1000", None, Some(tokens))];
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let team = app.team.id;
    let chat = || app.chat(&key, json!({"model": MODEL, "messages": user_message()}));

    let first = chat().await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-ratelimit-limit-requests"], "2");
    assert_eq!(first.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(chat().await.status(), StatusCode::OK);
    let refused = chat().await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    assert_xai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        &format!(
            "Too many requests for team {team} and model {MODEL}. Your team's rate limit is — Requests per Minute (actual/limit): 3/2."
        ),
    )
    .await;
    // Another team has limits of its own.
    let other = app.team_with_key("rate-other").await.3;
    assert_eq!(
        app.chat(&other, json!({"model": MODEL, "messages": user_message()}))
            .await
            .status(),
        StatusCode::OK
    );

    // $50 bought: the middle tier, whose limit for this model is 3 a minute.
    purchase(&app, team, 50).await;
    app.clock.advance(Duration::seconds(120));
    for _ in 0..3 {
        let response = chat().await;
        assert_eq!(response.status(), StatusCode::OK, "{}", response.text().await.unwrap());
    }
    assert_eq!(chat().await.status(), StatusCode::TOO_MANY_REQUESTS);
    let tiers = app.services().tiers;
    let standing = tiers.tier_of(team).await.unwrap();
    assert_eq!((standing.tier, standing.standing.reached), (1, 1));

    // Pinned to the top tier by the operator (audited): tokens per minute, strictly exceeded.
    let pinned = tiers
        .pin(team, Some(2), Actor::Operator, &RequestContext::default())
        .await
        .unwrap();
    assert_eq!(pinned.tier, 2);
    let events = app.store().list_audit_events(team, 100).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.action == AuditAction::SetRateLimitTier.as_str())
    );
    // The serving node reads the pin within a minute.
    app.clock.advance(Duration::seconds(120));
    assert_eq!(chat().await.status(), StatusCode::OK);
    assert_eq!(
        chat().await.status(),
        StatusCode::OK,
        "exactly at the limit is not over it"
    );
    assert_xai_error(
        chat().await,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        &format!(
            "Too many tokens for team {team} and model {MODEL}. Your team's rate limit is — Tokens per Minute (actual/limit): {}/{tokens}.",
            2 * tokens
        ),
    )
    .await;

    // Unpinned: the spend decides again, and the tier reached stays (never downgraded).
    let unpinned = tiers
        .pin(team, None, Actor::Operator, &RequestContext::default())
        .await
        .unwrap();
    assert_eq!(unpinned.tier, 1);
    assert!(
        tiers
            .pin(team, Some(3), Actor::Operator, &RequestContext::default())
            .await
            .is_err(),
        "no such tier"
    );
    assert!(app.metrics().await.contains("limit=\"team_rpm\""));
    app.finish().await;
}

/// A private Redis for one test: started on a free port, killed when dropped.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = Self {
            child: std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("redis-server (scripts/test needs it installed): {e}")),
            url: format!("redis://127.0.0.1:{port}/0"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return redis;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two nodes sharing a real Redis enforce one limit between them: a team's and a key's. With
/// Redis gone, each enforces its share (the limit divided by the node count), counts it in a
/// metric, and neither refuses all traffic nor drops the limits.
async fn limits_are_shared_across_nodes_through_redis(db: TestDb) {
    let mut redis = PrivateRedis::start().await;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.redis_url = Some(redis.url.clone().into());
    config.rate_limits.nodes = Some(2);
    config.rate_limits.tiers = vec![tier("0", Some(4), None)];
    let app = TestApp::with_config(db, upstream, config).await;
    let node_b = tollgate_server::start(&app.config, app.clock.clone(), std::future::pending())
        .await
        .unwrap();
    let key = app.api_key().await;
    let body = json!({"model": MODEL, "messages": user_message()});
    let on = |base: String, key: String| {
        let client = app.client.clone();
        let body = body.clone();
        async move {
            client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let (a, b) = (app.base.clone(), format!("http://{}", node_b.addr));
    // Four a minute for the team, whichever node serves them.
    for base in [&a, &b, &a, &b] {
        assert_eq!(on(base.clone(), key.clone()).await, StatusCode::OK);
    }
    assert_eq!(on(a.clone(), key.clone()).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(on(b.clone(), key.clone()).await, StatusCode::TOO_MANY_REQUESTS);

    // A key's own limit is shared too (two minutes later, the team's window is clear).
    app.clock.advance(Duration::seconds(120));
    let limited = app
        .create_api_key(json!({"name": "shared", "acls": ["api-key:endpoint:*", "api-key:model:*"], "qpm": 3}))
        .await;
    let limited = limited["apiKey"].as_str().unwrap().to_owned();
    for base in [&a, &b, &a] {
        assert_eq!(on(base.clone(), limited.clone()).await, StatusCode::OK);
    }
    let response = app
        .client
        .post(format!("{b}/v1/chat/completions"))
        .bearer_auth(&limited)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_xai_error(
        response,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        "Requests per Minute (actual/limit): 4/3.",
    )
    .await;

    // Redis gone: each node its half of the team's four, in a fresh window.
    redis.kill();
    app.clock.advance(Duration::seconds(120));
    assert_eq!(on(a.clone(), key.clone()).await, StatusCode::OK);
    assert_eq!(on(a.clone(), key.clone()).await, StatusCode::OK);
    assert_eq!(on(a.clone(), key.clone()).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        on(b.clone(), key.clone()).await,
        StatusCode::OK,
        "node B counts its own share"
    );
    let metrics = app.metrics().await;
    let fallbacks: u64 = metrics
        .lines()
        .find(|line| line.starts_with("tollgate_rate_limit_fallback_requests_total "))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    assert_eq!(fallbacks, 3, "{metrics}");
    node_b.shutdown().await.unwrap();
    app.finish().await;
}
