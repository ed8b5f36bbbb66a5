//! Request and response bodies kept for abuse review: sealed at rest, read by the operator
//! (audited), deleted after the retention (whole day partitions on PostgreSQL, batches on
//! SQLite), moved time.

use chrono::Duration;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_domain::{AuditAction, RequestId};
use tollgate_store::testsuite::TestDb;

use crate::util::{MODEL, TestApp, assert_xai_error, on_both_backends, tollgate_cli, user_message};

on_both_backends!(
    bodies_are_kept_sealed_read_when_audited_and_deleted_after_retention,
    zero_retention_keeps_nothing_and_training_is_the_admins_choice,
    bodies_waiting_to_be_written_are_written_at_shutdown,
);

/// The request id Tollgate answered with.
fn request_id_of(response: &reqwest::Response) -> RequestId {
    response.headers()["x-request-id"].to_str().unwrap().parse().unwrap()
}

/// Waits for the writer (it writes in the background, never delaying an answer).
async fn kept(app: &TestApp, id: RequestId) -> tollgate_store::RetainedBody {
    for _ in 0..250 {
        if let Some(row) = app.store().request_body(id).await.unwrap() {
            return row;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the bodies of {id} were not kept");
}

async fn bodies_are_kept_sealed_read_when_audited_and_deleted_after_retention(db: TestDb) {
    let app = TestApp::new(db).await;
    let retention = app.services().retention;
    // The housekeeping job's first run makes the coming days' partitions (PostgreSQL).
    assert_eq!(retention.prune().await.unwrap(), 0);
    let key = app.api_key().await;

    let secret_words = "the parcel goes to 12 Harbour Lane";
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": secret_words}]});
    let plain = app.chat(&key, body.clone()).await;
    assert_eq!(plain.status(), StatusCode::OK);
    let plain_id = request_id_of(&plain);
    let answer: Value = plain.json().await.unwrap();
    let streamed = app.stream_chat(&key).await;
    let streamed_id = request_id_of(&streamed);
    let _ = streamed.text().await.unwrap();
    let embedded = app
        .post("/v1/embeddings", &key, json!({"model": MODEL, "input": "embed me"}))
        .await;
    let embedded_id = request_id_of(&embedded);

    let row = kept(&app, plain_id).await;
    assert_eq!(
        (row.team_id, row.endpoint.as_str(), row.model.as_str()),
        (app.team.id, "chat", MODEL)
    );
    let sealed = String::from_utf8_lossy(&row.sealed);
    assert!(!sealed.contains("Harbour"), "kept encrypted, not in the clear");
    kept(&app, streamed_id).await;
    assert_eq!(kept(&app, embedded_id).await.endpoint, "embeddings");
    assert!(app.metrics().await.contains("tollgate_request_bodies_dropped_total 0"));

    // The operator reads one for an abuse review: the request and the answer as sent, audited.
    let shown = tollgate_cli(
        &app,
        &[
            "requests",
            "show",
            "--id",
            &plain_id.to_string(),
            "--reason",
            "abuse ticket 42",
        ],
        None,
    );
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["team_id"], app.team.id.to_string());
    let request: Value = serde_json::from_str(shown["request"].as_str().unwrap()).unwrap();
    assert_eq!(request, body);
    let response: Value = serde_json::from_str(shown["response"].as_str().unwrap()).unwrap();
    assert_eq!(response["choices"], answer["choices"]);
    let events = app.store().list_audit_events(app.team.id, 50).await.unwrap();
    let read = events
        .iter()
        .find(|e| e.action == AuditAction::ReadRequestBodies.as_str())
        .unwrap();
    assert!(read.description.contains("abuse ticket 42"), "{}", read.description);
    // The stream is kept as the client got it.
    let shown = tollgate_cli(
        &app,
        &[
            "requests",
            "show",
            "--id",
            &streamed_id.to_string(),
            "--reason",
            "ticket 43",
        ],
        None,
    );
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert!(shown["response"].as_str().unwrap().contains("data: "), "{shown}");
    // No reason, no reading; an unknown request is said so.
    let refused = tollgate_cli(
        &app,
        &["requests", "show", "--id", &plain_id.to_string(), "--reason", " "],
        None,
    );
    assert!(!refused.status.success());
    let unknown = tollgate_cli(
        &app,
        &[
            "requests",
            "show",
            "--id",
            &RequestId::new().to_string(),
            "--reason",
            "x",
        ],
        None,
    );
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no bodies are kept"));

    // A day short of the retention, all is kept; past it, all is deleted.
    app.clock.advance(Duration::days(29));
    assert_eq!(retention.prune().await.unwrap(), 0);
    app.clock.advance(Duration::days(2));
    assert_eq!(retention.prune().await.unwrap(), 3);
    for id in [plain_id, streamed_id, embedded_id] {
        assert!(app.store().request_body(id).await.unwrap().is_none());
    }

    // A request on a day no partition was made for ahead (PostgreSQL keeps it in the default
    // partition) is deleted all the same.
    app.clock.advance(Duration::days(10));
    let late = app
        .chat(&key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    let late_id = request_id_of(&late);
    kept(&app, late_id).await;
    app.clock.advance(Duration::days(31));
    assert_eq!(retention.prune().await.unwrap(), 1);
    assert!(app.store().request_body(late_id).await.unwrap().is_none());
    app.finish().await;
}

/// The writer gathers bodies for a moment before writing them; a server stopping right after
/// answering writes what it gathered rather than losing it.
async fn bodies_waiting_to_be_written_are_written_at_shutdown(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    // A window far longer than the test: only the shutdown can write the body.
    config.retention.bodies_write_ms = 3_600_000;
    let mut app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let answered = app
        .chat(&key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_eq!(answered.status(), StatusCode::OK);
    let id = request_id_of(&answered);
    app.server.take().unwrap().shutdown().await.unwrap();
    let db = app.db.take().unwrap();
    let reopened = tollgate_store::connect(&db.url, tollgate_store::testsuite::TEST_AUDIT_KEY)
        .await
        .unwrap();
    assert!(
        reopened.request_body(id).await.unwrap().is_some(),
        "kept, though the server stopped within the writer's window"
    );
    reopened.close().await;
    db.finish().await;
}

/// Training on a team's data is its Admins' choice (off by default, audited). A team the operator
/// granted zero retention keeps nothing: no bodies, no stored responses (`store` defaults to
/// false; `store: true` and `previous_response_id` are refused clearly); withdrawn, bodies are
/// kept again. Every node applies a change within a second.
async fn zero_retention_keeps_nothing_and_training_is_the_admins_choice(db: TestDb) {
    let app = TestApp::new(db).await;
    let ada = app.signed_up("ada@example.com").await;
    let (_, team) = app
        .call_json(Method::POST, "/api/teams", &ada, Some(json!({"name": "Data"})))
        .await;
    let data_use = format!("/api/teams/{}/data-use", team["teamId"].as_str().unwrap());
    let (status, off) = app.call_json(Method::GET, &data_use, &ada, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(off, json!({"trainingAllowed": false, "zeroRetention": false}));
    let (status, on) = app
        .call_json(Method::PUT, &data_use, &ada, Some(json!({"trainingAllowed": true})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(on["trainingAllowed"], true);
    let (status, _) = app
        .call_json(Method::PUT, &data_use, &ada, Some(json!({"trainingAllowed": "yes"})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Zero retention for the app's team, granted by the operator.
    let key = app.api_key().await;
    let team_id = app.team.id.to_string();
    let granted = tollgate_cli(&app, &["team", "zero-retention", "--team", &team_id, "--grant"], None);
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let events = app.store().list_audit_events(app.team.id, 20).await.unwrap();
    assert!(events.iter().any(|e| e.action == AuditAction::SetDataUse.as_str()));
    app.clock.advance(Duration::seconds(1));
    let chat = app
        .chat(&key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_eq!(chat.status(), StatusCode::OK);
    let unkept = request_id_of(&chat);
    let response = app
        .post("/v1/responses", &key, json!({"model": MODEL, "input": "Hi"}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response: Value = response.json().await.unwrap();
    assert_eq!(response["store"], false, "nothing stored by default");
    let fetched = app
        .client
        .get(app.url(&format!("/v1/responses/{}", response["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::NOT_FOUND);
    for (body, text) in [
        (
            json!({"model": MODEL, "input": "Hi", "store": true}),
            "responses cannot be stored",
        ),
        (
            json!({"model": MODEL, "input": "Hi", "previous_response_id": "resp_x"}),
            "previous_response_id cannot be used",
        ),
    ] {
        let refused = app.post("/v1/responses", &key, body).await;
        assert_xai_error(
            refused,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            text,
        )
        .await;
    }

    // Withdrawn: kept again. The writer keeps bodies in order, so once this one is kept, the
    // zero-retention team's would have been too, had it been sent to the writer.
    let withdrawn = tollgate_cli(
        &app,
        &["team", "zero-retention", "--team", &team_id, "--withdraw"],
        None,
    );
    assert!(withdrawn.status.success());
    app.clock.advance(Duration::seconds(1));
    let chat = app
        .chat(&key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    kept(&app, request_id_of(&chat)).await;
    assert!(app.store().request_body(unkept).await.unwrap().is_none());
    app.finish().await;
}
