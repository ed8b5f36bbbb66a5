//! xAI's gRPC API, driven by the official `xai-sdk` from PyPI (installed by `scripts/test` into
//! `tests/grpc/.venv`), against a Tollgate started here with `grpc_listen`. The model upstream
//! is the test kit's mock, as for REST.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use tollgate_domain::{Actor, Endpoint, RequestContext, Ticks};
use tollgate_store::testsuite::TestDb;

use crate::util::{
    ALIAS, COMPLETION_PRICE, MODEL, PROMPT_PRICE, TestApp, expected_cost, on_both_backends, test_config, user_message,
};

on_both_backends!(the_xai_sdk_works_unchanged_over_grpc);

/// xAI's server-side web search through the SDK: the same loop as REST (searched on the
/// operator's backend, the model called again), with citations, the tool's fee in the cost, and
/// the search shown as a tool call when streamed.
#[tokio::test]
async fn the_xai_sdk_searches_the_web_over_grpc() {
    let Some(python) = sdk_python() else {
        return;
    };
    let stand_in = tollgate_testkit::search::SearchStandIn::start().await.unwrap();
    let db = TestDb::sqlite().await;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.grpc_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.search.web = Some(tollgate_server::config::WebSearchConfig {
        backend: "searxng".into(),
        url: Some(stand_in.base_url.clone()),
        api_key: None,
    });
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let sdk_config = json!({
        "port": app.server.as_ref().unwrap().grpc_addr.unwrap().port(),
        "key": key,
        "model": MODEL,
        "answer": tollgate_testkit::ANSWER_WORDS.concat(),
        "cost": expected_cost(),
        "citations": tollgate_testkit::search::WEB_RESULTS.iter().map(|result| result.0).collect::<Vec<_>>(),
        // Two model calls and one search at xAI's fee.
        "search_cost": 2 * expected_cost() + 50_000_000,
    });
    run_sdk(python, "search", sdk_config).await;
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 2);
    assert!(usage.iter().all(|record| record.usage.web_search_calls == 1));
    assert_eq!(stand_in.queries().len(), 2);
    app.finish().await;
}

/// With `grpc_tls_cert` and `grpc_tls_key` the listener speaks TLS, and the SDK's default
/// channel (TLS) works, trusting the test's self-signed certificate for 127.0.0.1.
#[tokio::test]
async fn the_grpc_listener_speaks_tls() {
    let Some(python) = sdk_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (cert, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ])
        .arg("-keyout")
        .arg(&key_pem)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let db = TestDb::sqlite().await;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.grpc_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    config.grpc_tls_cert = Some(cert.clone());
    config.grpc_tls_key = Some(key_pem);
    let app = TestApp::with_config(db, upstream, config).await;
    let port = app.server.as_ref().unwrap().grpc_addr.unwrap().port();
    let key = app.api_key().await;
    let sdk_config = json!({
        "port": port,
        "key": key,
        "team_id": app.team.id.to_string(),
        "model": MODEL,
        "answer": tollgate_testkit::ANSWER_WORDS.concat(),
        "cost": expected_cost(),
    });
    run_sdk_with(
        python,
        "tls",
        sdk_config,
        vec![("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", cert)],
    )
    .await;
    app.finish().await;
}

/// The virtual environment's Python with `xai-sdk`, if installed. Under CI it must be.
fn sdk_python() -> Option<PathBuf> {
    let python = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/.venv/bin/python"));
    let installed = python.exists()
        && Command::new(&python)
            .args(["-c", "import xai_sdk"])
            .status()
            .is_ok_and(|status| status.success());
    if installed {
        return Some(python);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "xai-sdk is not installed in tests/grpc/.venv (scripts/test installs it)"
    );
    eprintln!("skipped: xai-sdk is not installed in tests/grpc/.venv (scripts/test installs it)");
    None
}

/// Runs `tests/grpc/sdk.py` in `phase` with `config`; it must end by printing "ok". What it
/// printed before.
async fn run_sdk(python: PathBuf, phase: &'static str, config: Value) -> String {
    run_sdk_with(python, phase, config, Vec::new()).await
}

/// [`run_sdk`] with `env` set for the script.
async fn run_sdk_with(
    python: PathBuf,
    phase: &'static str,
    config: Value,
    env: Vec<(&'static str, PathBuf)>,
) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc/sdk.py");
    // The server runs on this test's runtime: wait for the script off it.
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args([script, phase, &config.to_string()])
            .envs(env)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "the xai-sdk script ({phase}) failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Sample, stream, defer and poll, models, tokenize, key info, an ACL miss, a wrong key, an
/// exhausted credit, an unknown model, the SDK's insecure channel, idle keep-alive pings, and
/// the client's own tools — each checked on the SDK's own objects; then the same request over
/// REST and gRPC is recorded alike.
async fn the_xai_sdk_works_unchanged_over_grpc(db: TestDb) {
    let Some(python) = sdk_python() else {
        return;
    };
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = test_config(&db, &upstream);
    config.grpc_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    // An image model at 7 cents an image.
    let mut imagine = config.models[MODEL].clone();
    imagine.aliases = vec![];
    imagine.image_price = Some(7);
    imagine.endpoints = vec!["image".into()];
    config.models.insert("imagine".into(), imagine);
    // Prepaid only, with $1: enough for what is asked, not for a hold of eight answers of 16,000
    // output tokens each.
    config.billing.max_invoiced_limit_usd = None;
    let app = TestApp::with_config(db, upstream, config).await;
    app.services()
        .ledger
        .grant(
            app.team.id,
            Ticks::new(10_000_000_000),
            "test credit",
            None,
            Actor::Operator,
            &RequestContext::default(),
        )
        .await
        .unwrap();
    let port = app.server.as_ref().unwrap().grpc_addr.unwrap().port();
    let created = app
        .create_api_key(json!({"name": "sdk", "acls": ["api-key:endpoint:*", "api-key:model:*"]}))
        .await;
    let key = created["apiKey"].as_str().unwrap();
    let narrow = app
        .create_api_key(json!({"name": "narrow", "acls": ["api-key:endpoint:*", "api-key:model:other"]}))
        .await;
    let wrong_key = "tgk_thisisnotakeyatall";
    let sdk_config = json!({
        "port": port,
        "key": key,
        "key_id": created["apiKeyId"],
        "redacted": created["redactedApiKey"],
        "team_id": app.team.id.to_string(),
        "narrow_key": narrow["apiKey"],
        "wrong_key": wrong_key,
        "wrong_key_text": tollgate_domain::keys::incorrect_key_message(wrong_key, app.config.console_url.trim_end_matches('/')),
        "out_of_credit_text": format!(
            "Your team {} has either used all available credits or reached its monthly spending limit. To \
             continue making API requests, please purchase more credits or raise your spending limit.",
            app.team.id
        ),
        "model": MODEL,
        "alias": ALIAS,
        "answer": tollgate_testkit::ANSWER_WORDS.concat(),
        "cost": expected_cost(),
        "prompt_tokens": tollgate_testkit::PROMPT_TOKENS,
        "completion_tokens": tollgate_testkit::COMPLETION_TOKENS,
        "cached_tokens": tollgate_testkit::CACHED_TOKENS,
        "prompt_price": PROMPT_PRICE,
        "completion_price": COMPLETION_PRICE,
        "image_price_ticks": 700_000_000,
    });
    let printed = run_sdk(python.clone(), "main", sdk_config.clone()).await;
    // A completion stored over gRPC is a stored response over REST, continuing the first.
    let second = printed.lines().find_map(|line| line.strip_prefix("stored ")).unwrap();
    let response = app.get_json(&format!("/v1/responses/{second}"), key).await;
    assert_eq!(response["object"], "response");
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        tollgate_testkit::ANSWER_WORDS.concat()
    );
    assert_eq!(response["usage"]["cost_in_usd_ticks"], expected_cost());
    // It was asked with the first turn sent again.
    let continued = app
        .upstream
        .requests()
        .into_iter()
        .find(|request| request["messages"].as_array().is_some_and(|m| m.len() == 3))
        .unwrap();
    let said: Vec<&str> = continued["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| message["content"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        said,
        [
            "Remember: blue",
            tollgate_testkit::ANSWER_WORDS.concat().as_str(),
            "What colour?"
        ]
    );
    // Sample, stream, defer and the two stored were charged, each at the mock's usage, the two
    // image requests and the embeddings; nothing refused was.
    let usage = app.store().list_usage(app.team.id, 20).await.unwrap();
    let chats: Vec<_> = usage
        .iter()
        .filter(|record| record.model == MODEL && record.endpoint == Endpoint::Chat)
        .collect();
    assert_eq!(chats.len(), 5, "{usage:?}");
    assert!(chats.iter().all(|record| record.cost.get() == expected_cost()));
    assert_eq!(chats.iter().filter(|record| record.streamed).count(), 2);
    let images: Vec<i64> = usage
        .iter()
        .filter(|record| record.endpoint == Endpoint::Image)
        .map(|record| record.cost.get())
        .collect();
    assert_eq!(images, [1_400_000_000, 700_000_000]);
    let embeddings: Vec<_> = usage
        .iter()
        .filter(|record| record.endpoint == Endpoint::Embeddings)
        .collect();
    assert_eq!(embeddings.len(), 1);
    assert_eq!(
        embeddings[0].usage.prompt_tokens,
        2 * tollgate_testkit::EMBEDDING_TOKENS_PER_INPUT
    );
    assert_eq!(usage.len(), 8, "{usage:?}");

    // The model calls the client's function: whole and streamed.
    app.upstream.call_tool_with(Some(r#"{"q":"x"}"#.into()));
    run_sdk(python.clone(), "tools", sdk_config.clone()).await;
    app.upstream.call_tool_with(None);

    // A deferred completion the model server refuses: the poll is the error, nothing charged.
    app.upstream.fail_with(400, "the model cannot do that");
    let mut failing = sdk_config;
    failing["refusal"] = json!("the model cannot do that");
    run_sdk(python, "failing", failing).await;
    app.upstream.recover();
    assert_eq!(app.store().list_usage(app.team.id, 20).await.unwrap().len(), 10);

    // One implementation, two surfaces: the same request over REST is recorded as over gRPC.
    let rest = app
        .chat(
            key,
            json!({"model": MODEL, "messages": user_message(), "max_tokens": 20}),
        )
        .await;
    assert_eq!(rest.status(), reqwest::StatusCode::OK);
    let usage = app.store().list_usage(app.team.id, 20).await.unwrap();
    assert_eq!(usage.len(), 11);
    let grpc = usage[1..]
        .iter()
        .find(|record| record.endpoint == Endpoint::Chat && !record.streamed)
        .unwrap();
    let newest = &usage[0];
    assert_eq!(
        (
            newest.model.as_str(),
            newest.endpoint,
            newest.usage,
            newest.cost,
            newest.estimated
        ),
        (
            grpc.model.as_str(),
            grpc.endpoint,
            grpc.usage,
            grpc.cost,
            grpc.estimated
        )
    );
    app.finish().await;
}
