//! The management API: xAI's paths and camelCase shapes, scoped to the management key's team.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{TestApp, assert_xai_error, on_both_backends};

on_both_backends!(
    create_and_list_keys,
    management_keys_manage_only_their_team,
    invalid_key_requests
);

async fn create_and_list_keys(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app
        .create_api_key(json!({"name": "ci", "acls": ["api-key:model:*"], "qps": 5, "qpm": 100, "tpm": "100000", "expireTime": "2027-01-01T00:00:00Z"}))
        .await;
    let key = created["apiKey"].as_str().unwrap();
    assert!(key.starts_with("tgk_") && key.len() == 42);
    assert_eq!(created["redactedApiKey"], format!("tgk_...{}", &key[key.len() - 4..]));
    assert_eq!(created["teamId"], app.team.id.to_string());
    assert_eq!(created["name"], "ci");
    assert_eq!(created["tpm"], "100000", "int64 as a string, as xAI sends it");
    assert_eq!(created["qps"], 5);
    assert_eq!(created["aclStrings"], json!(["api-key:model:*"]));
    assert_eq!(created["expireTime"], "2027-01-01T00:00:00.000000Z");
    assert_eq!(created["disabled"], false);
    assert_eq!(created["apiKeyBlocked"], false);

    for name in ["two", "three"] {
        app.create_api_key(json!({"name": name})).await;
    }
    let list_url = app.url(&format!("/auth/teams/{}/api-keys", app.team.id));
    let page: Value = app
        .client
        .get(&list_url)
        .query(&[("pageSize", "2")])
        .bearer_auth(&app.management_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = page["apiKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "two"]);
    assert!(
        page["apiKeys"][0].get("apiKey").is_none(),
        "the secret is shown only once"
    );
    let token = page["paginationToken"].as_str().unwrap();
    let next: Value = app
        .client
        .get(&list_url)
        .query(&[("pageSize", "2"), ("paginationToken", token)])
        .bearer_auth(&app.management_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(next["apiKeys"].as_array().unwrap().len(), 1);
    assert!(next.get("paginationToken").is_none());

    // Reads of key lists are audited too.
    let events = app.store().list_audit_events(app.team.id, 1).await.unwrap();
    assert_eq!(events[0].action, "ListApiKeys");

    let validation = app
        .get_json("/auth/management-keys/validation", &app.management_key)
        .await;
    assert_eq!(validation["scope"], "SCOPE_TEAM");
    assert_eq!(validation["scopeId"], app.team.id.to_string());
    assert_eq!(validation["name"], "ci");
    app.finish().await;
}

async fn management_keys_manage_only_their_team(db: TestDb) {
    let app = TestApp::new(db).await;
    let (_, other_team) = tollgate_store::testsuite::seed_user(app.store(), "someone@example.org").await;
    let denied = "The caller does not have permission to execute the specified operation";
    for team in [other_team.id.to_string(), uuid_like_unknown(), "not-a-uuid".to_owned()] {
        let response = app
            .client
            .post(app.url(&format!("/auth/teams/{team}/api-keys")))
            .bearer_auth(&app.management_key)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        // Another team, an unknown team and a malformed id answer alike.
        assert_xai_error(response, StatusCode::FORBIDDEN, denied, "not authorized for this team").await;
    }
    assert!(
        app.store()
            .list_api_keys(other_team.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    app.finish().await;
}

fn uuid_like_unknown() -> String {
    tollgate_domain::TeamId::new().to_string()
}

async fn invalid_key_requests(db: TestDb) {
    let app = TestApp::new(db).await;
    let url = app.url(&format!("/auth/teams/{}/api-keys", app.team.id));
    let invalid = "Client specified an invalid argument";
    let post = |body: Value| {
        app.client
            .post(&url)
            .bearer_auth(&app.management_key)
            .json(&body)
            .send()
    };

    let cases = [
        (json!({"name": ""}), StatusCode::BAD_REQUEST, "name"),
        (
            json!({"name": "x", "acls": ["root"]}),
            StatusCode::BAD_REQUEST,
            "invalid ACL 'root'",
        ),
        (json!({"name": "x", "qps": 0}), StatusCode::BAD_REQUEST, "qps"),
        (
            json!({"name": "x", "tpm": "lots"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "lots",
        ),
        (
            json!({"name": "x", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
        (
            json!({"name": "x", "expireTime": "2020-01-01T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
            "future",
        ),
    ];
    for (body, status, contains) in cases {
        assert_xai_error(post(body).await.unwrap(), status, invalid, contains).await;
    }
    let response = app.client.post(&url).json(&json!({"name": "x"})).send().await.unwrap();
    assert_xai_error(
        response,
        StatusCode::UNAUTHORIZED,
        "The request does not have valid authentication credentials",
        "No API key",
    )
    .await;
    let response = app
        .client
        .post(&url)
        .bearer_auth("tgm_nope")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_xai_error(
        response,
        StatusCode::UNAUTHORIZED,
        "The request does not have valid authentication credentials",
        "Invalid management key",
    )
    .await;

    // Nothing half-written: no key, and no audit event beyond the set-up's.
    assert!(
        app.store()
            .list_api_keys(app.team.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(app.store().list_audit_events(app.team.id, 10).await.unwrap().len(), 2);
    app.finish().await;
}
