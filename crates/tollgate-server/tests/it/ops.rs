//! Operations: probes, metrics, request ids, and the OpenAPI document's snapshot.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, on_both_backends, user_message};

on_both_backends!(probes_and_metrics);

/// With a `metrics_token`, the public listener serves /metrics to that bearer token only.
#[tokio::test]
async fn public_metrics_need_the_token() {
    let db = TestDb::sqlite().await;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.metrics_token = Some("a-long-enough-metrics-token".to_owned().into());
    let app = TestApp::with_config(db, upstream, config).await;
    let get = |token: Option<&'static str>| {
        let app = &app;
        async move {
            let mut request = app.client.get(app.url("/metrics"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }
    };
    assert_eq!(get(None).await.status(), StatusCode::UNAUTHORIZED);
    let wrong = get(Some("a-long-enough-metrics-tokem")).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    let right = get(Some("a-long-enough-metrics-token")).await;
    assert_eq!(right.status(), StatusCode::OK);
    assert!(right.text().await.unwrap().contains("tollgate_http_requests_total"));
}

async fn probes_and_metrics(db: TestDb) {
    let app = TestApp::new(db).await;
    let health: Value = app
        .client
        .get(app.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    // Every response carries the server's request id; a client's own does not replace it.
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(id.parse::<uuid::Uuid>().is_ok(), "{id}");

    let key = app.api_key().await;
    app.upstream.fail_with(503, "overloaded");
    let failed = app
        .chat(&key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);

    // Metrics are on the operator's listener; the public one has no /metrics without a token.
    let operator = app.server.as_ref().unwrap().operator_addr.unwrap();
    let metrics = app
        .client
        .get(format!("http://{operator}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    let public = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    for probe in ["/healthz", "/readyz"] {
        let answer = app
            .client
            .get(format!("http://{operator}{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "{probe} on the operator listener");
    }
    assert!(
        text.contains(r#"tollgate_http_requests_total{route="/healthz",method="GET",status="200"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"tollgate_http_requests_total{route="/v1/chat/completions",method="POST",status="502"} 1"#),
        "{text}"
    );
    assert!(text.contains("tollgate_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("tollgate_upstream_errors_total{upstream="), "{text}");

    // Readiness follows the database: once it is gone, the probe fails.
    app.store().close().await;
    let not_ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = not_ready.json().await.unwrap();
    assert_eq!(body["error"], "The database is unreachable");
    app.finish().await;
}

/// The OpenAPI document is generated from the code; this snapshot makes every change to the
/// published contract visible in review. `UPDATE_SNAPSHOTS=1 cargo test` rewrites it.
#[test]
fn openapi_document_matches_snapshot() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json");
    let generated = format!("{}\n", tollgate_http::openapi::document_json());
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi.json is out of date; run `UPDATE_SNAPSHOTS=1 cargo test openapi` and review the diff"
    );
    let document: Value = serde_json::from_str(&generated).unwrap();
    for path in [
        "/v1/chat/completions",
        "/v1/models",
        "/v1/api-key",
        "/auth/teams/{team_id}/api-keys",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(document["paths"].get(path).is_some(), "{path} is documented");
    }
}
