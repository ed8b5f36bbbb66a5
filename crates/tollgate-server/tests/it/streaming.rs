//! Streaming: chunks are relayed as they arrive, usage is asked of the upstream, priced, stored
//! before `[DONE]`; graceful shutdown lets a stream in flight finish.

use futures_util::StreamExt as _;
use reqwest::StatusCode;
use serde_json::Value;
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, expected_cost, on_both_backends};

on_both_backends!(
    stream_is_relayed_chunk_by_chunk_and_billed,
    shutdown_lets_streams_finish
);

/// Reads SSE `data:` payloads until `[DONE]` or the end.
async fn read_events(response: reqwest::Response) -> Vec<String> {
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(bytes) = body.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            events.push(event.trim().strip_prefix("data: ").unwrap().to_owned());
        }
    }
    events
}

async fn stream_is_relayed_chunk_by_chunk_and_billed(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let release = app.upstream.hold_streams();

    let response = app.stream_chat(&key).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.bytes_stream();

    // The upstream is holding the rest of its stream: what we receive now was relayed as it
    // arrived, not buffered until the end.
    let mut seen = String::new();
    while !seen.contains("Hello") {
        seen.push_str(&String::from_utf8_lossy(&body.next().await.unwrap().unwrap()));
    }
    assert!(!seen.contains("[DONE]"));
    assert!(
        app.store().list_usage(app.team.id, 10).await.unwrap().is_empty(),
        "not billed before the end"
    );
    release.notify_one();

    let mut rest = seen;
    while let Some(bytes) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    let events: Vec<&str> = rest
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the mock upstream.");
    assert!(chunks.iter().all(|c| c["model"] == MODEL));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["cost_in_usd_ticks"], expected_cost());
    assert_eq!(
        usage["total_tokens"],
        tollgate_testkit::PROMPT_TOKENS + tollgate_testkit::COMPLETION_TOKENS
    );

    // We asked the upstream for usage although the client did not.
    assert_eq!(app.upstream.requests()[0]["stream_options"]["include_usage"], true);
    // And it was stored before [DONE] went out.
    let stored = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].streamed && !stored[0].estimated);
    assert_eq!(stored[0].cost.get(), expected_cost());

    // A stream from an upstream that reports no usage is billed by count, marked estimated.
    app.upstream.omit_usage(true);
    let events = read_events(app.stream_chat(&key).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let newest = &app.store().list_usage(app.team.id, 1).await.unwrap()[0];
    assert!(newest.estimated);
    assert!(newest.usage.completion_tokens > 0);

    // A stream the upstream cuts short ends with an error event, never `[DONE]`; what was
    // delivered is billed by count and marked estimated.
    app.upstream.cut_streams(true);
    let events = read_events(app.stream_chat(&key).await).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(
        last["error"]["message"], "The model server failed while streaming",
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e == "[DONE]"));
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 3);
    assert!(app.store().list_usage(app.team.id, 1).await.unwrap()[0].estimated);
    app.finish().await;
}

async fn shutdown_lets_streams_finish(db: TestDb) {
    let mut app = TestApp::new(db).await;
    let key = app.api_key().await;
    let release = app.upstream.hold_streams();
    let response = app.stream_chat(&key).await;
    let mut body = response.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(!first.is_empty());

    // Shut down while the stream is in flight; new connections are refused, ours goes on.
    let server = app.server.take().unwrap();
    let store = std::sync::Arc::clone(&server.store);
    let stopping = tokio::spawn(server.shutdown());
    tokio::task::yield_now().await;
    release.notify_one();
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(bytes) = body.next().await {
        rest.push_str(&String::from_utf8_lossy(&bytes.unwrap()));
    }
    assert!(
        rest.trim_end().ends_with("data: [DONE]"),
        "the in-flight stream completed: {rest}"
    );
    stopping.await.unwrap().unwrap();
    assert!(
        app.client.get(app.url("/healthz")).send().await.is_err(),
        "no longer serving"
    );
    drop(store);
    // The usage of the finished stream was flushed before the store closed.
    let db = app.db.take().unwrap();
    let reopened = tollgate_store::connect(&db.url, tollgate_store::testsuite::TEST_AUDIT_KEY)
        .await
        .unwrap();
    assert_eq!(reopened.list_usage(app.team.id, 10).await.unwrap().len(), 1);
    reopened.close().await;
    db.finish().await;
}
