//! `/v1`: the walking skeleton (key created through the management API, a chat completion
//! through the upstream, usage priced and stored, audit events written) and every error answer.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_store::testsuite::TestDb;

use crate::util::{
    ALIAS, MODEL, TestApp, UPSTREAM_MODEL, assert_xai_error, expected_cost, on_both_backends, user_message,
};

on_both_backends!(
    paid_request_end_to_end,
    errors_are_in_xai_shape,
    upstream_failures_are_not_charged,
    acls_are_enforced,
    models_and_key_info,
    models_without_prices_are_refused_and_zero_is_free,
    language_models_list_prices_in_xais_units,
    embeddings_are_charged_per_input_token,
    images_are_charged_per_image,
    legacy_completions_are_charged_like_chat,
    tokenize_text_with_the_models_tokenizer,
    unreported_usage_is_counted_with_the_models_tokenizer,
);

/// `POST /v1/embeddings` goes through the same admission and billing as chat: the endpoint ACL
/// (`api-key:endpoint:embeddings`), the credit hold, and a charge of the input tokens at the
/// prompt price, recorded as usage of the embeddings endpoint. A model whose upstream serves no
/// embeddings is a clear 400; an upstream without usage is estimated, never free.
async fn embeddings_are_charged_per_input_token(db: TestDb) {
    use tollgate_testkit::EMBEDDING_TOKENS_PER_INPUT as PER_INPUT;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut chat_only = config.models[MODEL].clone();
    chat_only.aliases = vec![];
    chat_only.endpoints = vec!["chat".into()];
    config.models.insert("chat-only".into(), chat_only);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let response = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": ALIAS, "input": ["one", "two"], "encoding_format": "float"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["model"], MODEL);
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    let tokens = 2 * PER_INPUT as i64;
    assert_eq!(answer["usage"]["prompt_tokens"], tokens);
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], tokens * crate::util::PROMPT_PRICE);
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert_eq!(sent["encoding_format"], "float", "other fields pass through");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage[0].endpoint, tollgate_domain::Endpoint::Embeddings);
    assert_eq!(usage[0].cost.get(), tokens * crate::util::PROMPT_PRICE);

    // Without upstream usage: estimated from the input, and said so.
    app.upstream.omit_usage(true);
    let response = app
        .post(
            "/v1/embeddings",
            &key,
            json!({"model": MODEL, "input": "a sentence of some length"}),
        )
        .await;
    let answer: Value = response.json().await.unwrap();
    assert!(answer["usage"]["prompt_tokens"].as_i64().unwrap() > 0, "{answer}");
    app.upstream.omit_usage(false);

    for (body, text) in [
        (
            json!({"model": "chat-only", "input": "x"}),
            "The model chat-only does not support embeddings",
        ),
        (json!({"model": MODEL, "input": ""}), "input must not be empty"),
        (
            json!({"model": MODEL, "input": 5}),
            "input must be a string or an array",
        ),
    ] {
        let response = app.post("/v1/embeddings", &key, body).await;
        assert_xai_error(
            response,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            text,
        )
        .await;
    }
    let chat_key = app
        .create_api_key(json!({"name": "chat", "acls": ["api-key:endpoint:chat", "api-key:model:*"]}))
        .await;
    let response = app
        .post(
            "/v1/embeddings",
            chat_key["apiKey"].as_str().unwrap(),
            json!({"model": MODEL, "input": "x"}),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        "The caller does not have permission to execute the specified operation",
        "access to the embeddings endpoint is denied",
    )
    .await;
    crate::credit::assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// `POST /v1/images/generations`: the `image` endpoint ACL, a hold for every image asked for,
/// a charge per image made at the model's price (USD cents per image, xAI's unit, billed in
/// ticks), recorded as images on the usage and the month's invoice lines; the image models
/// listed with their price; a language model is a clear 400 here, and the listings need the
/// `models` ACL.
async fn images_are_charged_per_image(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut imagine = config.models[MODEL].clone();
    imagine.aliases = vec!["imagine-latest".into()];
    imagine.upstream_model = Some("upstream-imagine".into());
    imagine.prompt_price = None;
    imagine.cached_prompt_price = None;
    imagine.completion_price = None;
    imagine.image_price = Some(2);
    imagine.endpoints = vec!["image".into()];
    config.models.insert("imagine".into(), imagine);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let cents = 100_000_000i64;
    let response = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "imagine-latest", "prompt": "a lighthouse at dusk", "n": 2, "response_format": "b64_json", "size": "1024x1024"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["data"].as_array().unwrap().len(), 2);
    assert!(answer["data"][0]["b64_json"].is_string(), "{answer}");
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], 2 * 2 * cents, "$0.02 an image");
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["model"], "upstream-imagine");
    assert_eq!(sent["n"], 2);
    assert_eq!(sent["size"], "1024x1024", "other fields pass through");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage[0].endpoint, tollgate_domain::Endpoint::Image);
    assert_eq!(usage[0].model, "imagine");
    assert_eq!(usage[0].usage.images, 2);
    assert_eq!(usage[0].cost.get(), 4 * cents);
    // One image by default.
    let one = app
        .post(
            "/v1/images/generations",
            &key,
            json!({"model": "imagine", "prompt": "a cat"}),
        )
        .await;
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["data"][0]["url"], "https://images.example/0.png");
    assert_eq!(one["usage"]["cost_in_usd_ticks"], 2 * cents);
    // The month's invoice counts the images at their price.
    let (from, to) = tollgate_domain::ledger::month_bounds(tollgate_domain::Clock::now(&*app.clock));
    let month = app.store().month_usage(app.team.id, from, to).await.unwrap();
    let line = month
        .lines
        .iter()
        .find(|line| line.kind == tollgate_domain::ledger::TokenKind::Image)
        .unwrap();
    assert_eq!(
        (line.model.as_str(), line.tokens, line.unit_price.get()),
        ("imagine", 3, 2 * cents)
    );
    assert_eq!(line.amount.get(), 6 * cents);

    // The listings: image models with their price, and not among the language models.
    let models = app.get_json("/v1/image-generation-models", &key).await;
    assert_eq!(models["models"].as_array().unwrap().len(), 1);
    let model = &models["models"][0];
    assert_eq!(model["id"], "imagine");
    assert_eq!(model["image_price"], 2);
    assert_eq!(model["output_modalities"], json!(["image"]));
    assert_eq!(
        app.get_json("/v1/image-generation-models/imagine-latest", &key).await,
        *model
    );
    let language = app.get_json("/v1/language-models", &key).await;
    assert!(
        language["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["id"] != "imagine")
    );

    for (body, text) in [
        (
            json!({"model": MODEL, "prompt": "x"}),
            format!("The model {MODEL} does not support image"),
        ),
        (
            json!({"model": "imagine", "prompt": " "}),
            "prompt must not be empty".into(),
        ),
        (
            json!({"model": "imagine", "prompt": "x", "n": 11}),
            "n must be between 1 and 10".into(),
        ),
        (
            json!({"model": "imagine", "prompt": "x", "n": 0}),
            "n must be between 1 and 10".into(),
        ),
    ] {
        let response = app.post("/v1/images/generations", &key, body).await;
        assert_xai_error(
            response,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            &text,
        )
        .await;
    }
    let response = app
        .client
        .get(app.url(&format!("/v1/image-generation-models/{MODEL}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "a language model is no image model"
    );

    // A chat-only key may neither draw nor list models.
    let chat_key = app
        .create_api_key(json!({"name": "chat", "acls": ["api-key:endpoint:chat", "api-key:model:*"]}))
        .await;
    let chat_key = chat_key["apiKey"].as_str().unwrap();
    let response = app
        .post(
            "/v1/images/generations",
            chat_key,
            json!({"model": "imagine", "prompt": "x"}),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        "The caller does not have permission to execute the specified operation",
        "access to the image endpoint is denied",
    )
    .await;
    for path in [
        "/v1/models",
        "/v1/image-generation-models",
        "/v1/language-models/imagine",
    ] {
        let response = app
            .client
            .get(app.url(path))
            .bearer_auth(chat_key)
            .send()
            .await
            .unwrap();
        assert_xai_error(
            response,
            StatusCode::FORBIDDEN,
            "The caller does not have permission to execute the specified operation",
            "access to the models endpoint is denied",
        )
        .await;
    }
    crate::credit::assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// `POST /v1/completions` (legacy): the `completions` endpoint ACL, a hold for every generated
/// choice at OpenAI's default of 16 tokens when the request names no budget (the upstream is
/// told so), the charge at the model's prices, streamed or not; a model whose upstream serves no
/// completions is a clear 400.
async fn legacy_completions_are_charged_like_chat(db: TestDb) {
    use tollgate_testkit::ANSWER_WORDS;
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut chat_only = config.models[MODEL].clone();
    chat_only.aliases = vec![];
    chat_only.endpoints = vec!["chat".into()];
    config.models.insert("chat-only".into(), chat_only);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let response = app
        .post(
            "/v1/completions",
            &key,
            json!({"model": ALIAS, "prompt": "Say hello", "echo": false}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["model"], MODEL);
    assert_eq!(answer["choices"][0]["text"], ANSWER_WORDS.concat());
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], expected_cost());
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert_eq!(sent["max_tokens"], 16, "OpenAI's default budget, told to the upstream");
    assert_eq!(sent["echo"], false, "other fields pass through");
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage[0].endpoint, tollgate_domain::Endpoint::Completions);
    assert_eq!(usage[0].cost.get(), expected_cost());

    // Streamed: the words as they come, usage with its cost, then [DONE]; recorded as streamed.
    let response = app
        .post(
            "/v1/completions",
            &key,
            json!({"model": MODEL, "prompt": ["a", "b"], "max_tokens": 100000, "stream": true}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let words: String = chunks
        .iter()
        .filter_map(|chunk| chunk["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(words, ANSWER_WORDS.concat());
    assert!(chunks.iter().all(|chunk| chunk["model"] == MODEL));
    assert_eq!(chunks.last().unwrap()["usage"]["cost_in_usd_ticks"], expected_cost());
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["max_tokens"], 16_384, "lowered to the model's maximum");
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert!(usage[0].streamed);

    for (body, text) in [
        (
            json!({"model": "chat-only", "prompt": "x"}),
            "The model chat-only does not support completions",
        ),
        (json!({"model": MODEL, "prompt": []}), "prompt must be a text"),
        (json!({"model": MODEL, "prompt": [1, "x"]}), "prompt must be a text"),
        (
            json!({"model": MODEL, "prompt": "x", "n": 3, "best_of": 2}),
            "best_of must be at least n",
        ),
        (
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0}),
            "max_tokens must be at least 1",
        ),
    ] {
        assert_xai_error(
            app.post("/v1/completions", &key, body).await,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            text,
        )
        .await;
    }
    let chat_key = app
        .create_api_key(json!({"name": "chat", "acls": ["api-key:endpoint:chat", "api-key:model:*"]}))
        .await;
    let response = app
        .post(
            "/v1/completions",
            chat_key["apiKey"].as_str().unwrap(),
            json!({"model": MODEL, "prompt": "x"}),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        "The caller does not have permission to execute the specified operation",
        "access to the completions endpoint is denied",
    )
    .await;
    crate::credit::assert_ledger_consistent(&app).await;
    app.finish().await;
}

/// `/v1/language-models` and `/v1/models/{id}`: xAI's fields, prices in xAI's unit (1e-4 USD
/// per million tokens, which is ticks per token), aliases resolved, only what the key's model
/// ACLs allow, and xAI's 404 text for the rest.
async fn language_models_list_prices_in_xais_units(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let models = app.get_json("/v1/language-models", &key).await;
    let model = &models["models"][0];
    assert_eq!(model["id"], MODEL);
    assert_eq!(model["aliases"], json!([ALIAS]));
    assert_eq!(model["object"], "model");
    assert_eq!(model["owned_by"], "tollgate");
    assert_eq!(model["prompt_text_token_price"], crate::util::PROMPT_PRICE);
    assert_eq!(model["cached_prompt_text_token_price"], crate::util::CACHED_PRICE);
    assert_eq!(model["completion_text_token_price"], crate::util::COMPLETION_PRICE);
    assert_eq!(model["input_modalities"], json!(["text"]));
    let fingerprint = model["fingerprint"].as_str().unwrap();
    assert!(fingerprint.starts_with("fp_") && !fingerprint.contains(UPSTREAM_MODEL));
    // By alias: the public name.
    let one = app.get_json(&format!("/v1/language-models/{ALIAS}"), &key).await;
    assert_eq!(one, *model);
    let openai = app.get_json(&format!("/v1/models/{ALIAS}"), &key).await;
    assert_eq!(openai["id"], MODEL);
    for path in ["/v1/models/nope", "/v1/language-models/nope"] {
        let response = app.client.get(app.url(path)).bearer_auth(&key).send().await.unwrap();
        assert_xai_error(
            response,
            StatusCode::NOT_FOUND,
            "Some requested entity was not found",
            "The model nope does not exist or your team does not have access to it.",
        )
        .await;
    }
    // The test model serves embeddings too: it is an embedding model as well.
    let embedding = app.get_json("/v1/embedding-models", &key).await;
    assert_eq!(embedding["models"][0]["id"], MODEL);
    assert_eq!(
        app.get_json(&format!("/v1/embedding-models/{ALIAS}"), &key).await,
        *model
    );
    // A key allowed other models only sees none of these.
    let narrow = app
        .create_api_key(json!({"name": "narrow", "acls": ["api-key:endpoint:*", "api-key:model:other"]}))
        .await;
    let narrow = narrow["apiKey"].as_str().unwrap();
    assert_eq!(app.get_json("/v1/language-models", narrow).await, json!({"models": []}));
    let hidden = app
        .client
        .get(app.url(&format!("/v1/models/{MODEL}")))
        .bearer_auth(narrow)
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    app.finish().await;
}

/// A model the operator gave no prices is neither offered nor served (it could not be billed);
/// an explicit price of 0 is free.
async fn models_without_prices_are_refused_and_zero_is_free(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let model = |prompt: Option<i64>, completion: Option<i64>| tollgate_server::config::ModelConfig {
        base_url: Some(upstream.base_url.clone()),
        api_key: None,
        upstream_model: Some(crate::util::UPSTREAM_MODEL.into()),
        max_concurrency: None,
        max_queue: None,
        queue_timeout_seconds: None,
        upstreams: vec![],
        aliases: vec![],
        prompt_price: prompt,
        cached_prompt_price: None,
        completion_price: completion,
        image_price: None,
        web_search_price: 50_000_000,
        x_search_price: 50_000_000,
        server_side_tools: None,
        max_output_tokens: 16_384,
        endpoints: vec!["chat".into()],
        tokenizer: None,
        template_tokens_per_message: None,
        template_tokens_per_request: None,
    };
    config.models.insert("unpriced".into(), model(None, None));
    config.models.insert("free".into(), model(Some(0), Some(0)));
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let models = app.get_json("/v1/models", &key).await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"free") && !names.contains(&"unpriced"), "{names:?}");

    let refused = app
        .chat(&key, json!({"model": "unpriced", "messages": user_message()}))
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("no prices configured"),
        "{body}"
    );
    assert!(app.upstream.requests().is_empty(), "no upstream call");

    let free = app
        .chat(&key, json!({"model": "free", "messages": user_message()}))
        .await;
    assert_eq!(free.status(), StatusCode::OK);
    let answer: Value = free.json().await.unwrap();
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], 0);
}

async fn paid_request_end_to_end(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;

    let response = app
        .chat(
            &key,
            json!({"model": ALIAS, "messages": user_message(), "temperature": 0.2}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["model"], MODEL,
        "the resolved public name, not the alias or the upstream's name"
    );
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream."
    );
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], tollgate_testkit::PROMPT_TOKENS);
    assert_eq!(usage["completion_tokens"], tollgate_testkit::COMPLETION_TOKENS);
    assert_eq!(
        usage["total_tokens"],
        tollgate_testkit::PROMPT_TOKENS + tollgate_testkit::COMPLETION_TOKENS
    );
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"],
        tollgate_testkit::CACHED_TOKENS
    );
    assert_eq!(usage["cost_in_usd_ticks"], expected_cost());

    // The upstream got its own model name, the client's other parameters, and our upstream key.
    let sent = &app.upstream.requests()[0];
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert_eq!(sent["temperature"], 0.2);

    // Usage was stored for the team before the response was sent.
    let stored = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(stored.len(), 1);
    let record = &stored[0];
    assert_eq!(record.request_id.to_string(), request_id);
    assert_eq!(record.model, MODEL);
    assert_eq!(record.cost.get(), expected_cost());
    assert_eq!(record.usage.prompt_tokens, tollgate_testkit::PROMPT_TOKENS);
    assert!(!record.estimated && !record.streamed);
    assert_eq!(record.started_at, crate::util::start_time());

    // A client cannot make two requests share a usage record by sending the same request id:
    // each is billed.
    let reused = uuid::Uuid::now_v7().to_string();
    for _ in 0..2 {
        let response = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&key)
            .header("x-request-id", &reused)
            .json(&json!({"model": MODEL, "messages": user_message()}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_ne!(response.headers()["x-request-id"], reused.as_str());
    }
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 3);

    // Every mutation left its audit event: the user, the management key, the API key.
    let events = app.store().list_audit_events(app.team.id, 10).await.unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["CreateApiKey", "CreateManagementKey", "CreateUser"]);
    let create_key = &events[0];
    assert_eq!(create_key.actor_kind, "management_key");
    assert_eq!(create_key.outcome, "success");
    assert_eq!(create_key.ip.as_deref(), Some("127.0.0.1"));
    assert!(create_key.request_id.is_some());
    app.finish().await;
}

async fn errors_are_in_xai_shape(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let chat = app.url("/v1/chat/completions");
    let invalid = "Client specified an invalid argument";
    let forbidden = "The caller does not have permission to execute the specified operation";

    // No key: 401.
    let response = app
        .client
        .post(&chat)
        .json(&json!({"model": MODEL, "messages": user_message()}))
        .send()
        .await
        .unwrap();
    assert_xai_error(
        response,
        StatusCode::UNAUTHORIZED,
        "The request does not have valid authentication credentials",
        "No API key",
    )
    .await;

    // Live search asked for, with no search backend configured: a clear 400, no upstream call.
    let response = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": user_message(), "search_parameters": {"mode": "auto"}}),
        )
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        invalid,
        "The tool web_search is not offered here: this platform has no backend configured for it",
    )
    .await;
    assert!(app.upstream.requests().is_empty());

    // A wrong key: 400, with xAI's text and the key shown redacted.
    let wrong = "tgk_thisisnotarealkeybutlookslikeone000000";
    let response = app
        .chat(wrong, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        invalid,
        "Incorrect API key provided: tg***00. You can obtain an API key from http://127.0.0.1:8080.",
    )
    .await;
    // A well-formed key (valid checksum) that does not exist: the same answer.
    let mut forged = key.clone();
    forged.replace_range(4..8, "ZZZZ");
    let response = app
        .chat(&forged, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, invalid, "Incorrect API key provided").await;

    // Unknown model: 404.
    let response = app
        .chat(&key, json!({"model": "no-such-model", "messages": user_message()}))
        .await;
    assert_xai_error(
        response,
        StatusCode::NOT_FOUND,
        "Some requested entity was not found",
        "no-such-model",
    )
    .await;

    // Malformed JSON: 400.
    let response = app
        .client
        .post(&chat)
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::BAD_REQUEST, invalid, "not valid JSON").await;
    // Wrong-typed and missing fields: 422.
    let response = app.chat(&key, json!({"model": 42, "messages": user_message()})).await;
    assert_xai_error(response, StatusCode::UNPROCESSABLE_ENTITY, invalid, "model").await;
    let response = app.chat(&key, json!({"model": MODEL})).await;
    assert_xai_error(response, StatusCode::UNPROCESSABLE_ENTITY, invalid, "messages").await;
    let response = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}),
        )
        .await;
    assert_xai_error(response, StatusCode::UNPROCESSABLE_ENTITY, invalid, "wizard").await;
    // Semantically invalid: 400.
    let response = app.chat(&key, json!({"model": MODEL, "messages": []})).await;
    assert_xai_error(response, StatusCode::BAD_REQUEST, invalid, "at least one message").await;
    // No content type: 415.
    let response = app
        .client
        .post(&chat)
        .bearer_auth(&key)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::UNSUPPORTED_MEDIA_TYPE, invalid, "Content-Type").await;
    // Unknown path and wrong method, in the same shape.
    let response = app.client.get(app.url("/v1/nope")).send().await.unwrap();
    assert_xai_error(
        response,
        StatusCode::NOT_FOUND,
        "Some requested entity was not found",
        "/v1/nope",
    )
    .await;
    let response = app.client.get(&chat).bearer_auth(&key).send().await.unwrap();
    assert_xai_error(response, StatusCode::METHOD_NOT_ALLOWED, invalid, "Method not allowed").await;

    // A management key is no inference key, and an inference key no management key: each is
    // told which kind of key the API takes.
    let wrong_kind =
        "This kind of key cannot call this API: inference (/v1) takes an API key, the Management API a management key";
    let response = app
        .chat(&app.management_key, json!({"model": MODEL, "messages": user_message()}))
        .await;
    assert_xai_error(response, StatusCode::FORBIDDEN, forbidden, wrong_kind).await;
    let response = app
        .client
        .get(app.url("/auth/management-keys/validation"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_xai_error(response, StatusCode::FORBIDDEN, forbidden, wrong_kind).await;

    // None of that was charged.
    assert!(app.store().list_usage(app.team.id, 10).await.unwrap().is_empty());
    app.finish().await;
}

async fn upstream_failures_are_not_charged(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let body = json!({"model": MODEL, "messages": user_message()});

    app.upstream.fail_with(500, "model crashed");
    let response = app.chat(&key, body.clone()).await;
    assert_xai_error(
        response,
        StatusCode::BAD_GATEWAY,
        "The service is currently unavailable",
        "failed to answer",
    )
    .await;

    // The upstream refusing the request itself is the client's problem: its reason passes on.
    app.upstream.fail_with(400, "max_tokens is too large");
    let response = app.chat(&key, body.clone()).await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "max_tokens is too large",
    )
    .await;

    app.upstream.recover();
    let ok = app.chat(&key, body.clone()).await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(
        app.store().list_usage(app.team.id, 10).await.unwrap().len(),
        1,
        "only the answered request is charged"
    );

    // Without usage from the upstream, Tollgate counts and marks the record estimated.
    app.upstream.omit_usage(true);
    let estimated: Value = app.chat(&key, body).await.json().await.unwrap();
    assert!(estimated["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    let newest = &app.store().list_usage(app.team.id, 1).await.unwrap()[0];
    assert!(newest.estimated);
    app.finish().await;
}

async fn acls_are_enforced(db: TestDb) {
    let app = TestApp::new(db).await;
    let body = json!({"model": MODEL, "messages": user_message()});
    let denied = "The caller does not have permission to execute the specified operation";

    let no_acls = app.create_api_key(json!({"name": "nothing"})).await;
    let response = app.chat(no_acls["apiKey"].as_str().unwrap(), body.clone()).await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        denied,
        "access to the chat endpoint is denied",
    )
    .await;

    let other_model = app
        .create_api_key(json!({"name": "other", "acls": ["api-key:endpoint:chat", "api-key:model:grok-other"]}))
        .await;
    let response = app.chat(other_model["apiKey"].as_str().unwrap(), body.clone()).await;
    assert_xai_error(
        response,
        StatusCode::FORBIDDEN,
        denied,
        "access to model grok-test is denied",
    )
    .await;

    let exact = app
        .create_api_key(json!({"name": "exact", "acls": ["api-key:endpoint:chat", "api-key:model:grok-test"]}))
        .await;
    // An alias resolves to the model, and the ACL is checked on the model's name.
    let response = app
        .chat(
            exact["apiKey"].as_str().unwrap(),
            json!({"model": ALIAS, "messages": user_message()}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // Expiry is checked on every request against the injected clock.
    let expiring = app.create_api_key(json!({"name": "brief", "acls": ["api-key:endpoint:*", "api-key:model:*"], "expireTime": "2026-11-01T13:00:00Z"})).await;
    let expiring = expiring["apiKey"].as_str().unwrap();
    assert_eq!(app.chat(expiring, body.clone()).await.status(), StatusCode::OK);
    app.clock.advance(chrono::Duration::hours(1));
    let response = app.chat(expiring, body).await;
    assert_xai_error(response, StatusCode::FORBIDDEN, denied, "expired").await;
    app.finish().await;
}

async fn models_and_key_info(db: TestDb) {
    let app = TestApp::new(db).await;
    let created = app
        .create_api_key(json!({"name": "reader", "acls": ["api-key:endpoint:chat", "api-key:endpoint:models", "api-key:model:grok-test"], "tpm": "5000", "qps": 3}))
        .await;
    let key = created["apiKey"].as_str().unwrap();

    let models = app.get_json("/v1/models", key).await;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");

    let info = app.get_json("/v1/api-key", key).await;
    let mut fields: Vec<&str> = info.as_object().unwrap().keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "acls",
            "api_key_blocked",
            "api_key_disabled",
            "api_key_id",
            "create_time",
            "modified_by",
            "modify_time",
            "name",
            "redacted_api_key",
            "team_blocked",
            "team_id",
            "user_id"
        ]
    );
    assert_eq!(info["api_key_id"], created["apiKeyId"]);
    assert_eq!(info["team_id"], app.team.id.to_string());
    assert_eq!(
        info["acls"],
        json!([
            "api-key:endpoint:chat",
            "api-key:endpoint:models",
            "api-key:model:grok-test"
        ])
    );
    assert_eq!(info["redacted_api_key"], created["redactedApiKey"]);
    assert!(!info.to_string().contains(key), "the full key is never shown again");
    app.finish().await;
}

/// `POST /v1/tokenize-text`: the model's tokenizer (tiktoken's cl100k here, a known answer),
/// xAI's shape, the `tokenize` endpoint ACL, and a clear 400 for a model without a tokenizer.
async fn tokenize_text_with_the_models_tokenizer(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut plain = config.models[MODEL].clone();
    plain.aliases = vec![];
    plain.tokenizer = None;
    let mut hugging_face = plain.clone();
    config.models.insert("no-tokenizer".into(), plain);
    hugging_face.tokenizer = Some(tollgate_testkit::TOKENIZER_JSON.into());
    config.models.insert("hf-model".into(), hugging_face);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let response = app
        .post(
            "/v1/tokenize-text",
            &key,
            json!({"text": "Hello world", "model": ALIAS}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer,
        json!({"token_ids": [
            {"token_id": 9906, "string_token": "Hello", "token_bytes": [72, 101, 108, 108, 111]},
            {"token_id": 1917, "string_token": " world", "token_bytes": [32, 119, 111, 114, 108, 100]}
        ]})
    );
    // A model with its Hugging Face tokenizer.json (the test kit's small word-level one).
    let answer: Value = app
        .post(
            "/v1/tokenize-text",
            &key,
            json!({"text": "Hello world!", "model": "hf-model"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer,
        json!({"token_ids": [
            {"token_id": 1, "string_token": "Hello", "token_bytes": [72, 101, 108, 108, 111]},
            {"token_id": 2, "string_token": "world", "token_bytes": [119, 111, 114, 108, 100]},
            {"token_id": 4, "string_token": "!", "token_bytes": [33]}
        ]})
    );
    assert!(app.upstream.requests().is_empty(), "no upstream call");
    assert!(
        app.store().list_usage(app.team.id, 10).await.unwrap().is_empty(),
        "not charged"
    );
    let response = app
        .post("/v1/tokenize-text", &key, json!({"text": "x", "model": "no-tokenizer"}))
        .await;
    assert_xai_error(
        response,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "The model no-tokenizer has no tokenizer configured",
    )
    .await;
    let chat_only = app
        .create_api_key(json!({"name": "chat", "acls": ["api-key:endpoint:chat", "api-key:model:*"]}))
        .await;
    let response = app
        .post(
            "/v1/tokenize-text",
            chat_only["apiKey"].as_str().unwrap(),
            json!({"text": "x", "model": MODEL}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = app
        .post("/v1/tokenize-text", &key, json!({"text": "x", "model": "nope"}))
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.finish().await;
}

/// An upstream that reports no usage is billed by Tollgate's count, marked estimated: with the
/// model's tokenizer (its Hugging Face tokenizer.json) and its configured chat-template
/// overhead, whole answers and streams.
async fn unreported_usage_is_counted_with_the_models_tokenizer(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let model = config.models.get_mut(MODEL).unwrap();
    model.tokenizer = Some(tollgate_testkit::TOKENIZER_JSON.into());
    model.template_tokens_per_message = Some(3);
    model.template_tokens_per_request = Some(5);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    app.upstream.omit_usage(true);
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hello world"}]});
    let answer: Value = app.chat(&key, body.clone()).await.json().await.unwrap();
    // "hello world": 2 tokens, + 3 for the message, + 5 for the request.
    assert_eq!(answer["usage"]["prompt_tokens"], 2 + 3 + 5);
    // "Hello from the mock upstream.": hello, from, the, mock, upstream, "." by the tokenizer.
    assert_eq!(answer["usage"]["completion_tokens"], 6);
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert!(usage[0].estimated);
    assert_eq!(usage[0].usage.prompt_tokens, 10);

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let text = app.chat(&key, streamed).await.text().await.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 2);
    assert!(usage[0].estimated && usage[0].streamed);
    assert_eq!(usage[0].usage.prompt_tokens, 10, "the prompt by the tokenizer");
    app.finish().await;
}
