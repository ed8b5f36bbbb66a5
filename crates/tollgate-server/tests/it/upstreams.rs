//! Several upstreams per model: shared by weight, failover on connect errors and 5xx before any
//! byte reached the client (whole answers and streams), passive health (consecutive failures
//! eject for a while, by the injected clock), concurrency caps (429 with `retry-after`, the
//! backup, or a bounded queue), metrics per upstream.

use reqwest::StatusCode;
use serde_json::json;
use tollgate_server::config::UpstreamConfig;
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::MockUpstream;

use crate::util::{MODEL, TestApp, assert_xai_error, on_both_backends};

on_both_backends!(
    upstreams_share_fail_over_and_are_ejected,
    concurrency_caps_answer_429_or_use_the_backup,
    over_the_caps_a_bounded_queue_waits,
);

fn upstream(mock: &MockUpstream, weight: u32, max_concurrency: Option<u32>) -> UpstreamConfig {
    UpstreamConfig {
        base_url: mock.base_url.clone(),
        api_key: None,
        upstream_model: None,
        weight,
        max_concurrency,
        connect_timeout_seconds: None,
        read_timeout_seconds: None,
    }
}

/// An app whose `MODEL` is served by `upstreams` (whose first mock, `first`, is `app.upstream`).
async fn app_with(db: TestDb, first: MockUpstream, upstreams: Vec<UpstreamConfig>) -> TestApp {
    let mut config = crate::util::test_config(&db, &first);
    let model = config.models.get_mut(MODEL).unwrap();
    model.base_url = None;
    model.api_key = None;
    model.upstreams = upstreams;
    TestApp::with_config(db, first, config).await
}

/// A chat request sent by a task of its own: its status, once answered.
fn send_chat(app: &TestApp, key: &str) -> tokio::task::JoinHandle<StatusCode> {
    let (client, url, key) = (app.client.clone(), app.url("/v1/chat/completions"), key.to_owned());
    tokio::spawn(async move {
        client
            .post(url)
            .bearer_auth(key)
            .json(&json!({"model": MODEL, "messages": crate::util::user_message()}))
            .send()
            .await
            .unwrap()
            .status()
    })
}

fn chats(mock: &MockUpstream) -> usize {
    mock.requests().len()
}

/// Waits until `mock` has received `count` requests (sent by tasks of this runtime).
async fn wait_for(mock: &MockUpstream, count: usize) {
    for _ in 0..500 {
        if chats(mock) >= count {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the upstream never received request {count}");
}

async fn upstreams_share_fail_over_and_are_ejected(db: TestDb) {
    let a = MockUpstream::start().await.unwrap();
    let b = MockUpstream::start().await.unwrap();
    let upstreams = vec![upstream(&a, 1, None), upstream(&b, 1, None)];
    let a_name = a.base_url.clone();
    let app = app_with(db, a, upstreams).await;
    let a = &app.upstream;
    let key = app.api_key().await;

    // Equal weights: turns.
    for _ in 0..4 {
        assert_eq!(app.hello_status(&key).await, StatusCode::OK);
    }
    assert_eq!((chats(a), chats(&b)), (2, 2));

    // One fails with a 5xx before answering: every request is served by the other, and after
    // three failures in a row the failing one is passed over.
    a.fail_with(500, "boom");
    for _ in 0..8 {
        assert_eq!(app.hello_status(&key).await, StatusCode::OK);
    }
    assert_eq!(chats(a), 2 + 3, "tried until ejected, then passed over");
    assert_eq!(chats(&b), 2 + 8);
    let streamed = app.stream_chat(&key).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.text().await.unwrap().trim_end().ends_with("data: [DONE]"));
    assert_eq!(chats(&b), 2 + 9, "a stream fails over too, before its first byte");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(&format!(
            "tollgate_upstream_errors_total{{upstream=\"{a_name}\",kind=\"status\"}} 3"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("tollgate_upstream_ejections_total{{upstream=\"{a_name}\"}} 1")));
    // Each request was charged once, by whichever upstream served it.
    assert_eq!(app.store().list_usage(app.team.id, 50).await.unwrap().len(), 13);

    // After the ejection (the injected clock), it is tried again; recovered, it serves again.
    a.recover();
    app.clock.advance(chrono::Duration::seconds(31));
    for _ in 0..4 {
        assert_eq!(app.hello_status(&key).await, StatusCode::OK);
    }
    assert!(chats(a) > 5, "back in turn");

    // Both failing: the last failure is the answer (a 5xx from the model servers), not charged.
    a.fail_with(503, "down");
    b.fail_with(503, "down");
    let before = app.store().list_usage(app.team.id, 50).await.unwrap().len();
    let response = app.hello(&key).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(app.store().list_usage(app.team.id, 50).await.unwrap().len(), before);

    // A 4xx is the request's fault: no failover, and it is passed on.
    a.fail_with(400, "bad request for this model");
    b.fail_with(400, "bad request for this model");
    let (a_before, b_before) = (chats(a), chats(&b));
    assert_xai_error(
        app.hello(&key).await,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "bad request for this model",
    )
    .await;
    assert_eq!(chats(a) + chats(&b), a_before + b_before + 1, "one upstream was asked");
    app.finish().await;
}

/// A capped upstream at its cap sends the next request to the backup (weight 0); with both at
/// their caps, the answer is 429 with `retry-after`, in xAI's shape, and nothing is charged.
async fn concurrency_caps_answer_429_or_use_the_backup(db: TestDb) {
    let a = MockUpstream::start().await.unwrap();
    let backup = MockUpstream::start().await.unwrap();
    let upstreams = vec![upstream(&a, 1, Some(1)), upstream(&backup, 0, Some(1))];
    let app = app_with(db, a, upstreams).await;
    let key = app.api_key().await;
    let a_gate = app.upstream.hold_all_answers();
    let backup_gate = backup.hold_all_answers();
    let send = || send_chat(&app, &key);
    let first = send();
    wait_for(&app.upstream, 1).await;
    let second = send();
    wait_for(&backup, 1).await;
    assert_eq!(chats(&app.upstream), 1, "the capped upstream was not sent a second");

    let refused = app.hello(&key).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_xai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "Some resource has been exhausted",
        "at capacity",
    )
    .await;

    a_gate.add_permits(100);
    backup_gate.add_permits(100);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 2);
    // Slots are given back: the capped one serves again.
    assert_eq!(app.hello_status(&key).await, StatusCode::OK);
    app.finish().await;
}

/// With `max_queue`, a request over the caps waits for a slot (shown in a gauge) instead of a
/// 429; the queue is bounded: one more than it holds is refused at once.
async fn over_the_caps_a_bounded_queue_waits(db: TestDb) {
    let a = MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &a);
    let model = config.models.get_mut(MODEL).unwrap();
    model.max_concurrency = Some(1);
    model.max_queue = Some(1);
    let app = TestApp::with_config(db, a, config).await;
    let key = app.api_key().await;
    let gate = app.upstream.hold_all_answers();
    let send = || send_chat(&app, &key);
    let first = send();
    wait_for(&app.upstream, 1).await;
    let queued = send();
    let mut waiting = false;
    for _ in 0..500 {
        if app.metrics().await.contains("tollgate_upstream_queued_requests 1") {
            waiting = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(waiting, "the second request waits in the queue");
    assert_eq!(chats(&app.upstream), 1, "and is not sent while the cap is reached");
    let refused = app.hello(&key).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS, "the queue is full");

    gate.add_permits(100);
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(queued.await.unwrap(), StatusCode::OK, "served once the slot was free");
    assert!(app.metrics().await.contains("tollgate_upstream_queued_requests 0"));
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 2);
    app.finish().await;
}
