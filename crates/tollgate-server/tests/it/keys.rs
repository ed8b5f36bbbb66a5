//! The API key lifecycle on xAI's Management API, proven on `/v1`: update by `fieldMask`,
//! disable and enable, delete, rotation with a grace period, expiry, per-key limits with their
//! headers, propagation to another node within a second, blocking by the operator.

use chrono::Duration;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_core::LeakOutcome;
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, assert_xai_error, on_both_backends, tollgate_cli, user_message};

on_both_backends!(
    update_by_field_mask,
    disable_enable_and_delete,
    a_change_reaches_another_node_within_a_second,
    rotation_with_and_without_grace,
    expiry_is_enforced_and_can_be_lifted,
    request_limits_answer_429_with_headers,
    token_limit_engages_once_exceeded,
    acl_names_are_listed_and_checked,
    blocked_keys_stay_blocked,
    leaked_secrets_withdraw_only_what_they_open,
    secrets_come_from_the_injected_entropy,
    last_use_is_recorded_without_a_write_per_request,
);

const FORBIDDEN: &str = "The caller does not have permission to execute the specified operation";
const INVALID: &str = "Client specified an invalid argument";
const NOT_FOUND: &str = "Some requested entity was not found";
const EXHAUSTED: &str = "Some resource has been exhausted";

impl TestApp {
    /// A key allowed everything, with extra fields; returns (id, secret).
    async fn key_with(&self, extra: Value) -> (String, String) {
        let mut body = json!({"name": "app", "acls": ["api-key:endpoint:*", "api-key:model:*"]});
        for (field, value) in extra.as_object().unwrap() {
            body[field] = value.clone();
        }
        let created = self.create_api_key(body).await;
        (
            created["apiKeyId"].as_str().unwrap().to_owned(),
            created["apiKey"].as_str().unwrap().to_owned(),
        )
    }

    async fn manage(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.management_key);
        let request = match body {
            Some(body) => request.json(&body),
            None => request,
        };
        request.send().await.unwrap()
    }

    async fn update(&self, id: &str, body: Value) -> reqwest::Response {
        self.manage(reqwest::Method::PUT, &format!("/auth/api-keys/{id}"), Some(body))
            .await
    }
}

async fn update_by_field_mask(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, _) = app.key_with(json!({"qps": 5, "tpm": "1000"})).await;
    app.clock.advance(Duration::seconds(10));

    let response = app
        .update(
            &id,
            json!({"apiKey": {"name": "renamed", "qpm": 200, "qps": 1}, "fieldMask": "name,qpm"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["qpm"], 200);
    assert_eq!(updated["qps"], 5, "not in the mask: unchanged");
    assert_eq!(updated["tpm"], "1000");
    assert_eq!(updated["modifyTime"], "2026-11-01T12:00:10.000000Z");
    assert!(updated.get("apiKey").is_none(), "no secret outside create and rotate");

    // Null clears a limit; snake_case names and tpm as a string are accepted.
    let cleared: Value = app
        .update(
            &id,
            json!({"apiKey": {"tpm": null, "acl_strings": ["api-key:model:*"]}, "fieldMask": "tpm, acl_strings"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["tpm"], Value::Null);
    assert_eq!(cleared["aclStrings"], json!(["api-key:model:*"]));
    let got = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(got["name"], "renamed");
    assert_eq!(got["aclStrings"], json!(["api-key:model:*"]));

    for (body, status, code, message) in [
        (
            json!({"apiKey": {"name": "x"}, "fieldMask": "name,team"}),
            StatusCode::BAD_REQUEST,
            INVALID,
            "fieldMask: 'team' cannot be updated",
        ),
        (
            json!({"apiKey": {}, "fieldMask": ""}),
            StatusCode::BAD_REQUEST,
            INVALID,
            "fieldMask names no field",
        ),
        (
            json!({"apiKey": {"qpm": "fast"}, "fieldMask": "qpm"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID,
            "apiKey.qpm must be a positive integer",
        ),
        (
            json!({"apiKey": {"qpm": 0}, "fieldMask": "qpm"}),
            StatusCode::BAD_REQUEST,
            INVALID,
            "qpm must be a positive",
        ),
        (
            json!({"apiKey": {"acls": ["api-key:endpoint:imagez"]}, "fieldMask": "acls"}),
            StatusCode::BAD_REQUEST,
            INVALID,
            "unknown endpoint (known: chat, completions, embeddings, image, tokenize, models, web_search, x_search)",
        ),
        (
            json!({"apiKey": {"expireTime": "2020-01-01T00:00:00Z"}, "fieldMask": "expireTime"}),
            StatusCode::BAD_REQUEST,
            INVALID,
            "expireTime must be in the future",
        ),
        (
            json!({"apiKey": {"name": "x"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            INVALID,
            "fieldMask",
        ),
    ] {
        let response = app.update(&id, body.clone()).await;
        assert_xai_error(response, status, code, message).await;
    }
    // Nothing of the refused updates was written.
    let got = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(
        (got["name"].clone(), got["qpm"].clone()),
        (json!("renamed"), json!(200))
    );

    // Another team's key, or no key at all, cannot be found.
    let (_, other_key) = app.other_team("other@example.com").await;
    let response = app
        .client
        .put(app.url(&format!("/auth/api-keys/{id}")))
        .bearer_auth(&other_key)
        .json(&json!({"apiKey": {"name": "mine"}, "fieldMask": "name"}))
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::NOT_FOUND, NOT_FOUND, "Cannot find API key").await;
    for path in [
        "/auth/api-keys/not-an-id",
        &format!("/auth/api-keys/{}", tollgate_domain::ApiKeyId::new()),
    ] {
        let response = app.manage(reqwest::Method::GET, path, None).await;
        assert_xai_error(response, StatusCode::NOT_FOUND, NOT_FOUND, "Cannot find API key").await;
    }

    let audit = app
        .get_json(
            &format!("/audit/teams/{}/events?eventFilter.query=UpdateApiKey", app.team.id),
            &app.management_key,
        )
        .await;
    let descriptions: Vec<&str> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["description"].as_str().unwrap())
        .collect();
    assert_eq!(descriptions.len(), 2, "{descriptions:?}");
    assert!(descriptions[1].ends_with("fields: name, qpm"), "{descriptions:?}");
    app.finish().await;
}

async fn disable_enable_and_delete(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, key) = app.key_with(json!({})).await;
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);

    let disabled: Value = app
        .update(&id, json!({"apiKey": {"disabled": true}, "fieldMask": "disabled"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(disabled["disabled"], true);
    // This node forgets the key at once.
    assert_xai_error(
        app.hello(&key).await,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "The API key is disabled",
    )
    .await;
    let propagation = app
        .get_json(&format!("/auth/api-keys/{id}/propagation"), &app.management_key)
        .await;
    assert_eq!(propagation["propagated"], false);
    app.clock.advance(Duration::seconds(1));
    let propagation = app
        .get_json(&format!("/auth/api-keys/{id}/propagation"), &app.management_key)
        .await;
    assert_eq!(propagation["propagated"], true);
    assert_eq!(propagation["apiKeyId"], id);

    app.update(&id, json!({"apiKey": {"disabled": false}, "fieldMask": "disabled"}))
        .await;
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);

    let response = app
        .manage(reqwest::Method::DELETE, &format!("/auth/api-keys/{id}"), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({}));
    assert_xai_error(
        app.hello(&key).await,
        StatusCode::BAD_REQUEST,
        INVALID,
        "Incorrect API key provided",
    )
    .await;
    let response = app
        .manage(reqwest::Method::GET, &format!("/auth/api-keys/{id}"), None)
        .await;
    assert_xai_error(response, StatusCode::NOT_FOUND, NOT_FOUND, "Cannot find API key").await;
    let response = app
        .manage(reqwest::Method::DELETE, &format!("/auth/api-keys/{id}"), None)
        .await;
    assert_xai_error(response, StatusCode::NOT_FOUND, NOT_FOUND, "Cannot find API key").await;
    let list = app
        .get_json(&format!("/auth/teams/{}/api-keys", app.team.id), &app.management_key)
        .await;
    assert!(list["apiKeys"].as_array().unwrap().is_empty());
    // Its usage (the two answered requests) stays with the team.
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 2);
    app.finish().await;
}

async fn a_change_reaches_another_node_within_a_second(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, key) = app.key_with(json!({})).await;
    // A second node on the same database and clock.
    let node_b = tollgate_server::start(&app.config, app.clock.clone(), std::future::pending())
        .await
        .unwrap();
    let on_b = |key: &str| {
        app.client
            .post(format!("http://{}/v1/chat/completions", node_b.addr))
            .bearer_auth(key)
            .json(&json!({"model": MODEL, "messages": user_message()}))
            .send()
    };
    assert_eq!(on_b(&key).await.unwrap().status(), StatusCode::OK);

    app.update(&id, json!({"apiKey": {"disabled": true}, "fieldMask": "disabled"}))
        .await;
    // Node B still trusts its copy, for less than a second...
    app.clock.advance(Duration::milliseconds(900));
    assert_eq!(on_b(&key).await.unwrap().status(), StatusCode::OK);
    // ...and not after it, with no request to it in between.
    app.clock.advance(Duration::milliseconds(100));
    assert_eq!(on_b(&key).await.unwrap().status(), StatusCode::FORBIDDEN);
    node_b.shutdown().await.unwrap();
    app.finish().await;
}

async fn rotation_with_and_without_grace(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, old) = app.key_with(json!({})).await;
    let rotate_path = format!("/auth/api-keys/{id}/rotate");
    let rotate = |body: Option<Value>| app.manage(reqwest::Method::POST, &rotate_path, body);

    let rotated: Value = rotate(Some(json!({"gracePeriod": "60s"}))).await.json().await.unwrap();
    assert_eq!(rotated["apiKeyId"], id, "same id");
    let new = rotated["apiKey"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["redactedApiKey"], format!("tgk_...{}", &new[new.len() - 4..]));
    assert_eq!(rotated["previousSecretExpireTime"], "2026-11-01T12:01:00.000000Z");
    assert_eq!(app.hello(&new).await.status(), StatusCode::OK);
    assert_eq!(
        app.hello(&old).await.status(),
        StatusCode::OK,
        "the old secret works during the grace period"
    );
    app.clock.advance(Duration::seconds(61));
    assert_xai_error(
        app.hello(&old).await,
        StatusCode::BAD_REQUEST,
        INVALID,
        "Incorrect API key provided",
    )
    .await;
    assert_eq!(app.hello(&new).await.status(), StatusCode::OK);

    // Without a body (as xAI's clients send it) the old secret stops at once.
    let rotated: Value = rotate(None).await.json().await.unwrap();
    let newest = rotated["apiKey"].as_str().unwrap().to_owned();
    assert_xai_error(
        app.hello(&new).await,
        StatusCode::BAD_REQUEST,
        INVALID,
        "Incorrect API key provided",
    )
    .await;
    assert_eq!(app.hello(&newest).await.status(), StatusCode::OK);
    // GET /v1/api-key shows the new redaction.
    let info = app.get_json("/v1/api-key", &newest).await;
    assert_eq!(info["redacted_api_key"], rotated["redactedApiKey"]);

    for (body, message) in [
        (
            json!({"gracePeriod": "8d"}),
            "gracePeriod must be a duration in seconds",
        ),
        (
            json!({"gracePeriodSeconds": 604_801}),
            "the grace period must be between 0 and 7 days",
        ),
        (json!({"gracePeriod": "1s", "gracePeriodSeconds": 1}), "not both"),
        (json!({"grace": 1}), "invalid rotate body"),
    ] {
        assert_xai_error(rotate(Some(body)).await, StatusCode::BAD_REQUEST, INVALID, message).await;
    }
    let audit = app
        .get_json(
            &format!("/audit/teams/{}/events?eventFilter.query=RotateApiKey", app.team.id),
            &app.management_key,
        )
        .await;
    assert_eq!(audit["events"].as_array().unwrap().len(), 2);
    app.finish().await;
}

async fn expiry_is_enforced_and_can_be_lifted(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, key) = app.key_with(json!({"expireTime": "2026-11-01T13:00:00Z"})).await;
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);
    app.clock.advance(Duration::hours(2));
    assert_xai_error(
        app.hello(&key).await,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "The API key has expired",
    )
    .await;
    // Updating with null removes the expiry.
    app.update(&id, json!({"apiKey": {"expireTime": null}, "fieldMask": "expireTime"}))
        .await;
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);
    app.finish().await;
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> &'r str {
    response.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

async fn request_limits_answer_429_with_headers(db: TestDb) {
    let app = TestApp::new(db).await;
    let (_, key) = app.key_with(json!({"qps": 2, "qpm": 3})).await;

    let first = app.hello(&key).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "x-ratelimit-limit-requests-second"), "2");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests-second"), "1");
    assert_eq!(header(&first, "x-ratelimit-limit-requests"), "3");
    assert_eq!(header(&first, "x-ratelimit-remaining-requests"), "2");
    assert_eq!(header(&first, "x-ratelimit-reset-requests"), "60.000s");
    assert_eq!(
        header(&first, "x-ratelimit-limit-tokens"),
        "",
        "no tpm: no token headers"
    );
    let second = app.stream_chat(&key).await;
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        header(&second, "x-ratelimit-remaining-requests-second"),
        "0",
        "streams carry them too"
    );
    let _ = second.text().await.unwrap();

    let refused = app.hello(&key).await;
    assert_eq!(header(&refused, "retry-after"), "1");
    assert_eq!(header(&refused, "x-ratelimit-remaining-requests-second"), "0");
    let message = "Too many requests for API key tgk_...";
    assert_xai_error(refused, StatusCode::TOO_MANY_REQUESTS, EXHAUSTED, message).await;
    let refused = app.hello(&key).await;
    assert_xai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        "Requests per Second (actual/limit): 3/2.",
    )
    .await;

    // The next second allows one more, then the minute's budget is spent.
    app.clock.advance(Duration::seconds(2));
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);
    let refused = app.hello(&key).await;
    assert_eq!(header(&refused, "retry-after"), "58");
    assert_xai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        "Requests per Minute (actual/limit): 4/3.",
    )
    .await;
    // Refused requests were not sent upstream, nor billed.
    assert_eq!(app.upstream.requests().len(), 3);
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 3);
    // A key without limits is not limited by another's.
    let (_, free) = app.key_with(json!({})).await;
    assert_eq!(app.hello(&free).await.status(), StatusCode::OK);

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("tollgate_rate_limited_requests_total{limit=\"qps\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_rate_limited_requests_total{limit=\"qpm\"} 1"),
        "{metrics}"
    );
    app.finish().await;
}

async fn token_limit_engages_once_exceeded(db: TestDb) {
    let app = TestApp::new(db).await;
    // The mock answers with 12 prompt + 5 completion tokens.
    let (_, key) = app.key_with(json!({"tpm": "20"})).await;
    let first = app.hello(&key).await;
    assert_eq!(header(&first, "x-ratelimit-limit-tokens"), "20");
    assert_eq!(
        header(&first, "x-ratelimit-remaining-tokens"),
        "20",
        "counted when the request finishes"
    );
    assert_eq!(first.status(), StatusCode::OK);
    // 17 of 20 used: not exceeded, so the next request runs, and takes the count to 34.
    let second = app.hello(&key).await;
    assert_eq!(header(&second, "x-ratelimit-remaining-tokens"), "3");
    assert_eq!(second.status(), StatusCode::OK);
    let refused = app.hello(&key).await;
    assert_xai_error(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        EXHAUSTED,
        "Tokens per Minute (actual/limit): 34/20.",
    )
    .await;
    app.clock.advance(Duration::minutes(2));
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);
    app.finish().await;
}

async fn acl_names_are_listed_and_checked(db: TestDb) {
    let app = TestApp::new(db).await;
    let endpoints = app
        .get_json(&format!("/auth/teams/{}/endpoints", app.team.id), &app.management_key)
        .await;
    assert_eq!(endpoints["endpoints"][0]["name"], "chat");
    assert_eq!(endpoints["endpoints"][1]["name"], "completions");
    assert_eq!(endpoints["endpoints"][2]["name"], "embeddings");
    assert_eq!(endpoints["endpoints"][3]["name"], "image");
    assert_eq!(endpoints["endpoints"][5]["name"], "models");
    let models = app
        .get_json(&format!("/auth/teams/{}/models", app.team.id), &app.management_key)
        .await;
    assert_eq!(models["models"][0]["name"], MODEL);
    assert_eq!(models["models"][0]["aliases"][0], crate::util::ALIAS);
    let (other_team, other_key) = app.other_team("acl-other@example.com").await;
    for path in ["endpoints", "models"] {
        let response = app
            .client
            .get(app.url(&format!("/auth/teams/{}/{path}", other_team.id)))
            .bearer_auth(&app.management_key)
            .send()
            .await
            .unwrap();
        assert_xai_error(
            response,
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "not authorized for this team",
        )
        .await;
    }
    let _ = other_key;
    let response = app
        .client
        .post(app.url(&format!("/auth/teams/{}/api-keys", app.team.id)))
        .bearer_auth(&app.management_key)
        .json(&json!({"name": "typo", "acls": ["api-key:endpoint:caht"]}))
        .send()
        .await
        .unwrap();
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "unknown endpoint (known: chat, completions, embeddings, image, tokenize, models, web_search, x_search)",
    )
    .await;
    app.finish().await;
}

/// Key secrets are drawn from the entropy the service is given (beside the clock), so a test
/// can pin them: a seeded service makes exactly the key the same seed predicts.
async fn secrets_come_from_the_injected_entropy(db: TestDb) {
    use std::sync::Arc;
    use tollgate_domain::{EntropyRng, SeededEntropy};
    let app = TestApp::new(db).await;
    let keys = app.services().keys.with_entropy(Arc::new(SeededEntropy::new(9)));
    let management = keys.authenticate_management_key(&app.management_key).await.unwrap();
    let (_, plain) = keys
        .create_api_key(
            &management.into(),
            app.team.id,
            tollgate_core::NewApiKey {
                name: "pinned".into(),
                acls: vec!["api-key:endpoint:*".into(), "api-key:model:*".into()],
                ..Default::default()
            },
            &Default::default(),
        )
        .await
        .unwrap();
    let prefix = tollgate_domain::keys::KeyPrefix::parse(&app.config.api_key_prefix).unwrap();
    let predicted = tollgate_domain::keys::PlainKey::generate(&prefix, &mut EntropyRng(&SeededEntropy::new(9)));
    assert_eq!(plain.expose(), predicted.expose());
    assert_eq!(app.hello_status(plain.expose()).await, StatusCode::OK);
}

/// A leaked secret withdraws what it opens, and only that: a rotated key's previous secret still
/// in its grace loses the grace (the current secret works on); one past its grace, or of a
/// deleted key or team, opens nothing, so nothing changes, and the report is recorded.
async fn leaked_secrets_withdraw_only_what_they_open(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, first) = app.key_with(json!({})).await;
    let rotate = |grace: &'static str| {
        let (app, id) = (&app, &id);
        async move {
            let rotated: Value = app
                .manage(
                    reqwest::Method::POST,
                    &format!("/auth/api-keys/{id}/rotate"),
                    Some(json!({"gracePeriod": grace})),
                )
                .await
                .json()
                .await
                .unwrap();
            rotated["apiKey"].as_str().unwrap().to_owned()
        }
    };
    // The service the webhook and the command line call, on the test's clock (the command line
    // runs on the wall clock; it is used below where time does not matter).
    let services = app.services();
    let report = |secret: String| {
        let services = &services;
        async move {
            services
                .keys
                .block_api_key_by_secret(
                    &secret,
                    "in a gist",
                    tollgate_domain::Actor::Operator,
                    &Default::default(),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };

    // In its grace: the old secret stops, the new one works on.
    let second = rotate("600s").await;
    assert_eq!(app.hello_status(&first).await, StatusCode::OK);
    assert!(matches!(report(first.clone()).await, LeakOutcome::GraceEnded(_)));
    // (Reported through another service instance, as another node: in force within a second.)
    app.clock.advance(Duration::seconds(1));
    assert_xai_error(
        app.hello(&first).await,
        StatusCode::BAD_REQUEST,
        INVALID,
        "Incorrect API key provided",
    )
    .await;
    assert_eq!(app.hello_status(&second).await, StatusCode::OK);
    let notice = app
        .store()
        .list_mail(10)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.mail.subject.contains("previous secret of API key 'app'"))
        .unwrap();
    assert!(
        notice.mail.body.contains("current secret is not affected"),
        "{}",
        notice.mail.body
    );

    // Past its grace: nothing to block; the live key is untouched and can still be rotated.
    let third = rotate("60s").await;
    app.clock.advance(Duration::minutes(2));
    assert!(matches!(report(second.clone()).await, LeakOutcome::AlreadyDead(_)));
    app.clock.advance(Duration::seconds(1));
    assert_eq!(app.hello_status(&third).await, StatusCode::OK);
    let fourth = rotate("0s").await;
    assert_eq!(app.hello_status(&fourth).await, StatusCode::OK);

    // A key whose team was deleted: by secret or by id, already withdrawn, not an error.
    let (team, doomed_id, doomed) = app.key_of_a_deleted_team().await;
    let output = tollgate_cli(
        &app,
        &["api-key", "block", "--reason", "in a gist"],
        Some(&format!("{doomed}\n")),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("opens nothing any more"));
    let team = team.to_string();
    let by_id = ["api-key", "block", "--team", &team, "--id", &doomed_id, "--reason", "x"];
    let output = tollgate_cli(&app, &by_id, None);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // Each report is on the record.
    let events = app
        .get_json(
            &format!("/audit/teams/{}/events?pageSize=50", app.team.id),
            &app.management_key,
        )
        .await;
    let actions: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"EndRotationGrace"), "{actions:?}");
    assert!(actions.contains(&"ReportLeakedSecret"), "{actions:?}");
    assert!(!actions.contains(&"BlockApiKey"), "{actions:?}");
}

async fn blocked_keys_stay_blocked(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, key) = app.key_with(json!({})).await;
    let (second_id, second) = app.key_with(json!({})).await;

    // By value, on standard input (never on the command line).
    let output = tollgate_cli(
        &app,
        &["api-key", "block", "--reason", "posted in a forum"],
        Some(&format!("{key}\n")),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains(&format!("blocked API key {id}")), "{stdout}");
    // By id; twice is harmless.
    let team = app.team.id.to_string();
    let by_id = [
        "api-key",
        "block",
        "--team",
        &team,
        "--id",
        &second_id,
        "--reason",
        "found in a log",
    ];
    assert!(tollgate_cli(&app, &by_id, None).status.success());
    let again = tollgate_cli(&app, &by_id, None);
    assert!(String::from_utf8_lossy(&again.stdout).contains("was already blocked"));
    // Not ours: refused plainly.
    let output = tollgate_cli(&app, &["api-key", "block", "--reason", "x"], Some("tgk_nope\n"));
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an API key of this Tollgate"));

    // Another process blocked them: this node sees it within a second.
    app.clock.advance(Duration::seconds(1));
    for key in [&key, &second] {
        assert_xai_error(
            app.hello(key).await,
            StatusCode::FORBIDDEN,
            FORBIDDEN,
            "The API key is blocked",
        )
        .await;
    }
    // Enabling does not lift a block; rotating a blocked key is refused.
    app.update(&id, json!({"apiKey": {"disabled": false}, "fieldMask": "disabled"}))
        .await;
    assert_xai_error(
        app.hello(&key).await,
        StatusCode::FORBIDDEN,
        FORBIDDEN,
        "The API key is blocked",
    )
    .await;
    let response = app
        .manage(reqwest::Method::POST, &format!("/auth/api-keys/{id}/rotate"), None)
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        INVALID,
        "the API key is blocked (posted in a forum)",
    )
    .await;
    let got = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(got["apiKeyBlocked"], true);
    assert_eq!(got["blockedReason"], "posted in a forum");
    let info_status = app
        .client
        .get(app.url("/v1/api-key"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(info_status, StatusCode::FORBIDDEN);

    let audit = app
        .get_json(
            &format!("/audit/teams/{}/events?eventFilter.query=BlockApiKey", app.team.id),
            &app.management_key,
        )
        .await;
    let events = audit["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "a repeated block writes nothing");
    assert_eq!(events[0]["actor"]["type"], "operator");
    app.finish().await;
}

async fn last_use_is_recorded_without_a_write_per_request(db: TestDb) {
    let app = TestApp::new(db).await;
    let (id, key) = app.key_with(json!({})).await;
    let fresh = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(fresh["lastUseTime"], Value::Null);
    app.clock.advance(Duration::minutes(3));
    assert_eq!(app.hello(&key).await.status(), StatusCode::OK);
    // Not written yet: the hot path only notes it in memory.
    let before = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(before["lastUseTime"], Value::Null);
    app.server.as_ref().unwrap().keys.flush_last_used().await.unwrap();
    let after = app.get_json(&format!("/auth/api-keys/{id}"), &app.management_key).await;
    assert_eq!(after["lastUseTime"], "2026-11-01T12:03:00.000000Z");
    app.finish().await;
}
