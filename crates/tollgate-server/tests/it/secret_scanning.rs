//! GitHub secret scanning: signed reports block our leaked keys and email the team's Admins over
//! real SMTP; unsigned or forged reports change nothing; GitHub's published sample verifies.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest as _;
use tollgate_domain::{Actor, RequestContext};
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::MockUpstream;

use crate::smtp::SmtpSink;
use crate::util::{TestApp, on_both_backends, test_config};

on_both_backends!(
    leaked_keys_are_blocked_and_admins_emailed,
    unsigned_or_forged_reports_change_nothing,
    githubs_sample_request_is_accepted,
    mail_is_retried_until_the_server_answers,
    each_reported_token_is_handled_on_its_own,
    failed_key_fetches_back_off,
);

const GITHUB_SAMPLE_ID: &str = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c";
const GITHUB_SAMPLE_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEYAGMWO8XgCamYKMJS6jc/qgvSlAd\nAjPuDPRcXU22YxgBrz+zoN19MzuRyW87qEt9/AmtoNP5GrobzUvQSyJFVw==\n-----END PUBLIC KEY-----\n";
const GITHUB_SAMPLE_BODY: &str =
    r#"[{"source":"commit","token":"some_token","type":"some_type","url":"https://example.com/base-repo-url/"}]"#;
const GITHUB_SAMPLE_SIGNATURE: &str =
    "MEQCIQDaMKqrGnE27S0kgMrEK0eYBmyG0LeZismAEz/BgZyt7AIfXt9fErtRS4XaeSt/AO1RtBY66YcAdjxji410VQV4xg==";

/// A stand-in for `api.github.com/meta/public_keys/secret_scanning`, serving keys the test
/// controls and counting fetches.
#[derive(Clone, Default)]
struct KeysEndpoint {
    keys: Arc<Mutex<Vec<(String, String)>>>,
    fetches: Arc<Mutex<usize>>,
    failing: Arc<Mutex<bool>>,
}

impl KeysEndpoint {
    async fn start(&self) -> String {
        async fn serve(State(endpoint): State<KeysEndpoint>) -> Result<Json<Value>, StatusCode> {
            *endpoint.fetches.lock().unwrap() += 1;
            if *endpoint.failing.lock().unwrap() {
                return Err(StatusCode::BAD_GATEWAY);
            }
            let keys: Vec<Value> = endpoint
                .keys
                .lock()
                .unwrap()
                .iter()
                .map(|(id, pem)| json!({"key_identifier": id, "key": pem, "is_current": true}))
                .collect();
            Ok(Json(json!({"public_keys": keys})))
        }
        let router = axum::Router::new()
            .route("/meta/public_keys/secret_scanning", axum::routing::get(serve))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        format!("http://{addr}/meta/public_keys/secret_scanning")
    }

    fn publish(&self, id: &str, pem: &str) {
        self.keys.lock().unwrap().push((id.to_owned(), pem.to_owned()));
    }

    fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap() = failing;
    }

    fn fetches(&self) -> usize {
        *self.fetches.lock().unwrap()
    }
}

/// A key pair of the test's own, published under `id`.
fn signing_key(endpoint: &KeysEndpoint, id: &str) -> SigningKey {
    let key = SigningKey::random(&mut rand::rngs::OsRng);
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    endpoint.publish(id, &pem);
    key
}

fn sign(key: &SigningKey, body: &str) -> String {
    let signature: p256::ecdsa::Signature = key.sign(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

fn sha256_hex(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

struct Setup {
    app: TestApp,
    endpoint: KeysEndpoint,
    sink: Option<SmtpSink>,
}

async fn setup(db: TestDb, with_smtp: bool) -> Option<Setup> {
    let sink = if with_smtp {
        Some(SmtpSink::start().await?)
    } else {
        None
    };
    let endpoint = KeysEndpoint::default();
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.secret_scanning.keys_url = endpoint.start().await;
    config.mail.smtp_url = sink.as_ref().map(|s| s.url().into());
    config.mail.from = "Tollgate Security <security@tollgate.test>".into();
    let app = TestApp::with_config(db, upstream, config).await;
    Some(Setup { app, endpoint, sink })
}

impl TestApp {
    async fn report(&self, key_id: Option<&str>, signature: Option<&str>, body: &str) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url("/webhooks/github/secret-scanning"))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(id) = key_id {
            request = request.header("Github-Public-Key-Identifier", id);
        }
        if let Some(signature) = signature {
            request = request.header("Github-Public-Key-Signature", signature);
        }
        request.send().await.unwrap()
    }
}

async fn leaked_keys_are_blocked_and_admins_emailed(db: TestDb) {
    let Some(Setup { app, endpoint, sink }) = setup(db, true).await else {
        return;
    };
    let sink = sink.unwrap();
    let github = signing_key(&endpoint, "key-1");
    let created = app
        .create_api_key(json!({"name": "prod", "acls": ["api-key:endpoint:*", "api-key:model:*"]}))
        .await;
    let leaked = created["apiKey"].as_str().unwrap().to_owned();
    let (_, leaked_management) = app
        .services()
        .keys
        .create_management_key(app.team.id, "deploy", Actor::Operator, None, &RequestContext::default())
        .await
        .unwrap();
    let leaked_management = leaked_management.expose().to_owned();
    assert_eq!(app.hello_status(&leaked).await, StatusCode::OK);

    let url = "https://github.com/someone/app/blob/main/.env";
    let lookalike = "tgk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA000000";
    let body = json!([
        {"token": leaked, "type": "tollgate_api_key", "url": url, "source": "commit"},
        {"token": lookalike, "type": "tollgate_api_key", "url": "", "source": "Content"},
        {"token": leaked_management, "type": "tollgate_management_key", "url": url, "source": "commit"},
    ])
    .to_string();
    let response = app.report(Some("key-1"), Some(&sign(&github, &body)), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let feedback: Value = response.json().await.unwrap();
    assert_eq!(
        feedback,
        json!([
            {"token_hash": sha256_hex(&leaked), "token_type": "tollgate_api_key", "label": "true_positive"},
            {"token_hash": sha256_hex(lookalike), "token_type": "tollgate_api_key", "label": "false_positive"},
            {"token_hash": sha256_hex(&leaked_management), "token_type": "tollgate_management_key", "label": "true_positive"},
        ])
    );
    assert!(!feedback.to_string().contains(&leaked), "the raw token is never echoed");

    // Blocked at once on this node; the management key is revoked.
    let response = app.hello(&leaked).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.text().await.unwrap().contains("The API key is blocked"));
    let response = app
        .client
        .get(app.url("/auth/management-keys/validation"))
        .bearer_auth(&leaked_management)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let key = app
        .get_json(
            &format!("/auth/api-keys/{}", created["apiKeyId"].as_str().unwrap()),
            &app.management_key,
        )
        .await;
    assert_eq!(key["apiKeyBlocked"], true);
    assert_eq!(
        key["blockedReason"],
        format!("GitHub secret scanning found it at {url} (commit)")
    );

    // On the record, by the system.
    let audit = app
        .get_json(
            &format!("/audit/teams/{}/events?pageSize=20", app.team.id),
            &app.management_key,
        )
        .await;
    let events = audit["events"].as_array().unwrap();
    let blocked = events.iter().find(|e| e["action"] == "BlockApiKey").unwrap();
    assert_eq!(blocked["actor"]["type"], "system");
    assert!(blocked["description"].as_str().unwrap().contains(url));
    assert!(events.iter().any(|e| e["action"] == "RevokeManagementKey"));

    // The team's Admin hears of both, over SMTP.
    let received = sink.wait_for(2).await;
    assert_eq!(received.len(), 2);
    let api_mail = received.iter().find(|m| m.subject.contains("API key 'prod'")).unwrap();
    assert_eq!(api_mail.to, "owner@example.com");
    assert_eq!(api_mail.subject, "[tollgate] API key 'prod' was blocked");
    assert!(api_mail.body.contains(url), "{}", api_mail.body);
    assert!(api_mail.body.contains("cannot be enabled again"), "{}", api_mail.body);
    assert!(!api_mail.body.contains(&leaked), "mail never carries the secret");
    let management_mail = received
        .iter()
        .find(|m| m.subject.contains("management key 'deploy'"))
        .unwrap();
    assert!(management_mail.body.contains("was revoked"));

    // The same report again: still ours, nothing new written or sent.
    let response = app.report(Some("key-1"), Some(&sign(&github, &body)), &body).await;
    assert_eq!(response.json::<Value>().await.unwrap()[0]["label"], "true_positive");
    let again = app
        .get_json(
            &format!("/audit/teams/{}/events?eventFilter.query=BlockApiKey", app.team.id),
            &app.management_key,
        )
        .await;
    assert_eq!(again["events"].as_array().unwrap().len(), 1);
    assert_eq!(app.store().list_mail(10).await.unwrap().len(), 2);
    app.finish().await;
}

async fn unsigned_or_forged_reports_change_nothing(db: TestDb) {
    let Some(Setup { app, endpoint, .. }) = setup(db, false).await else {
        return;
    };
    let github = signing_key(&endpoint, "key-1");
    let stranger = SigningKey::random(&mut rand::rngs::OsRng);
    let key = app.api_key().await;
    let body = json!([{"token": key, "type": "t", "url": "", "source": "commit"}]).to_string();
    let unauthorized = "The request does not have valid authentication credentials";

    for (id, signature, message) in [
        (None, None, "not signed"),
        (Some("key-1"), None, "not signed"),
        (Some("key-1"), Some("not base64!".to_owned()), "does not verify"),
        (Some("key-1"), Some(sign(&stranger, &body)), "does not verify"),
        (
            Some("key-1"),
            Some(sign(&github, &format!("{body} "))),
            "does not verify",
        ),
    ] {
        let response = app.report(id, signature.as_deref(), &body).await;
        crate::util::assert_xai_error(response, StatusCode::UNAUTHORIZED, unauthorized, message).await;
    }
    // A key id GitHub does not publish: one refetch (they are at most a minute apart), then
    // refused; a second unknown id within the minute does not refetch.
    app.clock.advance(chrono::Duration::minutes(2));
    let fetches = endpoint.fetches();
    let response = app.report(Some("key-9"), Some(&sign(&github, &body)), &body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(endpoint.fetches(), fetches + 1);
    let response = app.report(Some("key-8"), Some(&sign(&github, &body)), &body).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(endpoint.fetches(), fetches + 1);
    // GitHub rotates its key: the new id is fetched (a minute later).
    let rotated = signing_key(&endpoint, "key-2");
    app.clock.advance(chrono::Duration::minutes(2));
    let garbage = "this is not json";
    let response = app.report(Some("key-2"), Some(&sign(&rotated, garbage)), garbage).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "signed, but not GitHub's shape"
    );

    // Nothing was blocked.
    assert_eq!(app.hello_status(&key).await, StatusCode::OK);
    app.finish().await;
}

async fn githubs_sample_request_is_accepted(db: TestDb) {
    let Some(Setup { app, endpoint, .. }) = setup(db, false).await else {
        return;
    };
    endpoint.publish(GITHUB_SAMPLE_ID, GITHUB_SAMPLE_KEY);
    let response = app
        .report(
            Some(GITHUB_SAMPLE_ID),
            Some(GITHUB_SAMPLE_SIGNATURE),
            GITHUB_SAMPLE_BODY,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"token_hash": sha256_hex("some_token"), "token_type": "some_type", "label": "false_positive"}])
    );
    app.finish().await;
}

async fn mail_is_retried_until_the_server_answers(db: TestDb) {
    // Nothing listens on the configured SMTP port yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = KeysEndpoint::default();
    let upstream = MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.secret_scanning.keys_url = endpoint.start().await;
    config.mail.smtp_url = Some(format!("smtp://127.0.0.1:{port}").into());
    let app = TestApp::with_config(db, upstream, config).await;
    let github = signing_key(&endpoint, "key-1");
    let key = app.api_key().await;
    let body =
        json!([{"token": key, "type": "t", "url": "https://gist.github.com/x", "source": "gist_content"}]).to_string();
    assert_eq!(
        app.report(Some("key-1"), Some(&sign(&github, &body)), &body)
            .await
            .status(),
        StatusCode::OK
    );

    // The block did not wait for mail; the first attempt fails and is scheduled again.
    let mut queued = Vec::new();
    for _ in 0..200 {
        queued = app.store().list_mail(10).await.unwrap();
        if queued.first().is_some_and(|q| q.attempts == 1) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].attempts, 1);
    assert_eq!(queued[0].state(), tollgate_domain::MailState::Queued);
    assert!(queued[0].last_error.is_some());
    assert_eq!(
        queued[0].next_attempt_at,
        crate::util::start_time() + chrono::Duration::minutes(1)
    );

    // The server comes up on that port; once the retry is due, the mail goes out.
    let Some(sink) = SmtpSink::start_on(port).await else {
        app.finish().await;
        return;
    };
    app.clock.advance(chrono::Duration::minutes(1));
    app.server.as_ref().unwrap().mail_waker.wake();
    let received = sink.wait_for(1).await;
    assert!(received[0].body.contains("https://gist.github.com/x (gist_content)"));
    // Marked sent right after the server accepted it.
    let mut sent = None;
    for _ in 0..200 {
        let mail = app.store().list_mail(10).await.unwrap().remove(0);
        if mail.state() == tollgate_domain::MailState::Sent {
            sent = Some(mail);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sent.map(|m| m.attempts), Some(2));
    app.finish().await;
}

/// A report naming a token that opens nothing any more (its team was deleted) next to a live
/// one: each is handled on its own, and the live one is blocked.
async fn each_reported_token_is_handled_on_its_own(db: TestDb) {
    let Some(Setup { app, endpoint, .. }) = setup(db, false).await else {
        return;
    };
    let github = signing_key(&endpoint, "key-1");
    let (_, _, doomed) = app.key_of_a_deleted_team().await;
    let live = app.api_key().await;
    let body = json!([
        {"token": doomed, "type": "tollgate_api_key", "url": "", "source": "commit"},
        {"token": live, "type": "tollgate_api_key", "url": "", "source": "commit"},
    ])
    .to_string();
    let response = app.report(Some("key-1"), Some(&sign(&github, &body)), &body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let labels: Vec<Value> = response
        .json::<Value>()
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["label"].clone())
        .collect();
    assert_eq!(labels, [json!("true_positive"), json!("true_positive")]);
    assert_eq!(app.hello_status(&live).await, StatusCode::FORBIDDEN);
    app.finish().await;
}

/// GitHub's keys endpoint failing: the failure is remembered, so unsigned callers cannot make
/// the server fetch at will; the next try waits 1 minute, then 2, 4, … up to an hour.
async fn failed_key_fetches_back_off(db: TestDb) {
    let Some(Setup { app, endpoint, .. }) = setup(db, false).await else {
        return;
    };
    let github = signing_key(&endpoint, "key-1");
    let body = "[]";
    let signature = sign(&github, body);
    endpoint.fail(true);
    let attempt = || app.report(Some("key-1"), Some(&signature), body);
    assert_eq!(attempt().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(endpoint.fetches(), 1);
    for _ in 0..5 {
        assert_eq!(attempt().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(endpoint.fetches(), 1, "no fetch within the back-off");
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(attempt().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(endpoint.fetches(), 2);
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(attempt().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(endpoint.fetches(), 2, "the second failure waits two minutes");
    endpoint.fail(false);
    app.clock.advance(chrono::Duration::seconds(60));
    assert_eq!(attempt().await.status(), StatusCode::OK);
    assert_eq!(endpoint.fetches(), 3);
    app.finish().await;
}
