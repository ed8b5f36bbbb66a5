//! What an attacker tries against input and resources: names with control characters, limits
//! beyond int64, ACL floods, invented HTTP methods. Each answer is a clear 4xx in the surface's
//! shape, never a 500, and nothing is written.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, on_both_backends};

on_both_backends!(bad_names_and_limits_are_refused, acl_floods_are_refused);

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
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("BOGUS"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}
