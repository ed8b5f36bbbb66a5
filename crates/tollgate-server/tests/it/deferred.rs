//! Deferred chat completions: answered with a `request_id` at once, run in the background,
//! fetched exactly once (202 until then, 404 after), charged once when complete; a failure is
//! returned once and not charged; work lost with its node is reported failed; everything is
//! gone after 24 hours; only the team's own keys see it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::Clock as _;
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::ANSWER_WORDS;

use crate::util::{MODEL, TestApp, assert_xai_error, expected_cost, on_both_backends, user_message};

on_both_backends!(
    deferred_completions_are_fetched_once,
    failed_lost_and_old_deferred_completions,
);

async fn defer(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.chat(key, body).await
}

async fn poll(app: &TestApp, key: &str, id: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/v1/chat/deferred-completion/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Polls until the request is no longer pending (the background task runs on this runtime).
pub(crate) async fn poll_until_finished(app: &TestApp, key: &str, id: &str) -> reqwest::Response {
    for _ in 0..500 {
        let response = poll(app, key, id).await;
        if response.status() != StatusCode::ACCEPTED {
            return response;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the deferred completion never finished");
}

async fn deferred_completions_are_fetched_once(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let gate = app.upstream.hold_answers();
    let response = defer(
        &app,
        &key,
        json!({"model": MODEL, "messages": user_message(), "deferred": true}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let id = body["request_id"].as_str().unwrap().to_owned();
    assert_eq!(body, json!({"request_id": id}));

    // Running: 202 with an empty body; nothing charged yet; another team sees nothing.
    let pending = poll(&app, &key, &id).await;
    assert_eq!(pending.status(), StatusCode::ACCEPTED);
    assert!(pending.text().await.unwrap().is_empty());
    assert!(app.store().list_usage(app.team.id, 10).await.unwrap().is_empty());
    let (_, _, _, other_key) = app.team_with_key("Other").await;
    assert_eq!(poll(&app, &other_key, &id).await.status(), StatusCode::NOT_FOUND);

    gate.notify_one();
    let done = poll_until_finished(&app, &key, &id).await;
    assert_eq!(done.status(), StatusCode::OK);
    let answer: Value = done.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], MODEL);
    assert_eq!(answer["choices"][0]["message"]["content"], ANSWER_WORDS.concat());
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], expected_cost());
    let sent = app.upstream.requests().pop().unwrap();
    assert!(sent.get("deferred").is_none(), "the upstream never sees the field");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 1, "charged once");
    assert_eq!(usage[0].cost.get(), expected_cost());
    assert_eq!(usage[0].request_id.to_string(), id);

    // Returned once.
    assert_xai_error(
        poll(&app, &key, &id).await,
        StatusCode::NOT_FOUND,
        "Some requested entity was not found",
        "returned once",
    )
    .await;

    // Not a stream, and a boolean.
    for (body, text) in [
        (
            json!({"model": MODEL, "messages": user_message(), "deferred": true, "stream": true}),
            "cannot be streamed",
        ),
        (
            json!({"model": MODEL, "messages": user_message(), "deferred": "yes"}),
            "deferred must be true or false",
        ),
    ] {
        assert_xai_error(
            defer(&app, &key, body).await,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            text,
        )
        .await;
    }
    crate::credit::assert_ledger_consistent(&app).await;
    app.finish().await;
}

async fn failed_lost_and_old_deferred_completions(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;

    // A failure upstream: returned once as its error, not charged.
    app.upstream.fail_with(500, "boom");
    let response = defer(
        &app,
        &key,
        json!({"model": MODEL, "messages": user_message(), "deferred": true}),
    )
    .await;
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let failed = poll_until_finished(&app, &key, &id).await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    let body: Value = failed.json().await.unwrap();
    assert_eq!(body["code"], "The service is currently unavailable");
    assert_eq!(poll(&app, &key, &id).await.status(), StatusCode::NOT_FOUND);
    assert!(app.store().list_usage(app.team.id, 10).await.unwrap().is_empty());
    app.upstream.recover();

    // Lost: a request its node never finished (the node stopped) is reported failed, once.
    let now = app.clock.now();
    app.store()
        .insert_deferred(&tollgate_store::NewDeferred {
            id: "lost-one".into(),
            team_id: app.team.id,
            api_key_id: tollgate_domain::ApiKeyId::new(),
            model: MODEL.into(),
            created_at: now,
            lost_after: now + chrono::Duration::minutes(15),
            expires_at: now + chrono::Duration::hours(24),
        })
        .await
        .unwrap();
    assert_eq!(poll(&app, &key, "lost-one").await.status(), StatusCode::ACCEPTED);
    app.clock.advance(chrono::Duration::minutes(16));
    assert_xai_error(
        poll(&app, &key, "lost-one").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "The service is currently unavailable",
        "was lost",
    )
    .await;
    assert_eq!(poll(&app, &key, "lost-one").await.status(), StatusCode::NOT_FOUND);

    // Kept 24 hours: a result never fetched is gone after that, and swept.
    let response = defer(
        &app,
        &key,
        json!({"model": MODEL, "messages": user_message(), "deferred": true}),
    )
    .await;
    let id = response.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Whether it finished by then or not, it is not found after 24 hours.
    app.clock
        .advance(chrono::Duration::hours(24) + chrono::Duration::seconds(1));
    assert_eq!(poll(&app, &key, &id).await.status(), StatusCode::NOT_FOUND);
    let store = std::sync::Arc::clone(&app.server.as_ref().unwrap().store);
    let swept = tollgate_core::Housekeeping::new(store, app.clock.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(swept.deferred, 1);
    app.finish().await;
}
