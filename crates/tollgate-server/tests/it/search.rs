//! Server-side tools (xAI's web and X search): Tollgate runs the loop — the model (the test
//! kit's upstream, taught to ask for searches when offered them) calls the search, Tollgate
//! searches the operator's backend (a stand-in speaking SearXNG's, Brave's and X API v2's JSON),
//! feeds the results back, and the model answers with `citations`. Every model call's tokens and
//! every search that succeeded are charged on the one request.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::ledger::TokenKind;
use tollgate_server::config::{SearchConfig, WebSearchConfig, XSearchConfig};
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::search::{BRAVE_KEY, SearchStandIn, X_TOKEN};

use crate::util::{MODEL, TestApp, assert_xai_error, expected_cost, on_both_backends, tollgate_cli};

on_both_backends!(
    web_search_answers_with_citations_and_is_charged_per_call,
    filters_dates_and_both_backends_are_honoured,
    rounds_and_the_deadline_bound_the_loop,
    a_failing_search_is_reported_and_not_charged,
    tools_not_offered_or_not_granted_are_refused,
    searches_are_streamed_then_the_answer,
    the_openai_sdk_searches_unchanged,
);

/// xAI's fee: $5 per 1,000 calls.
const FEE: i64 = 50_000_000;

/// An app with `[search]` pointing at a stand-in: SearXNG for the web (or Brave with `brave`),
/// and X.
async fn app_with_search(db: TestDb, brave: bool, tune: impl FnOnce(&mut SearchConfig)) -> (TestApp, SearchStandIn) {
    let stand_in = SearchStandIn::start().await.unwrap();
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    config.search.web = Some(if brave {
        WebSearchConfig {
            backend: "brave".into(),
            url: Some(stand_in.base_url.clone()),
            api_key: Some(BRAVE_KEY.to_owned().into()),
        }
    } else {
        WebSearchConfig {
            backend: "searxng".into(),
            url: Some(stand_in.base_url.clone()),
            api_key: None,
        }
    });
    config.search.x = Some(XSearchConfig {
        url: stand_in.base_url.clone(),
        bearer_token: X_TOKEN.to_owned().into(),
    });
    tune(&mut config.search);
    let app = TestApp::with_config(db, upstream, config).await;
    (app, stand_in)
}

async fn ask(app: &TestApp, key: &str, tools: Value) -> Value {
    let response = app
        .chat(
            key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "rust runtime"}], "tools": tools}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// The month's invoice lines of one kind: (count, amount).
async fn month_line(app: &TestApp, kind: TokenKind) -> Option<(u64, i64)> {
    let (from, to) = tollgate_domain::ledger::month_bounds(tollgate_domain::Clock::now(&*app.clock));
    let month = app.store().month_usage(app.team.id, from, to).await.unwrap();
    month
        .lines
        .iter()
        .find(|line| line.kind == kind)
        .map(|line| (line.tokens, line.amount.get()))
}

/// The model asks for a web search, Tollgate runs it on SearXNG (JSON format), gives the model
/// the results (markup stripped, framed as untrusted) and the model answers: `citations` list
/// the results' URLs; the usage counts both model calls and one search, and its cost includes
/// the fee. The usage record, the invoice lines and the ledger agree.
async fn web_search_answers_with_citations_and_is_charged_per_call(db: TestDb) {
    let (app, stand_in) = app_with_search(db, false, |_| {}).await;
    let key = app.api_key().await;
    let answer = ask(&app, &key, json!([{"type": "web_search"}])).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        tollgate_testkit::ANSWER_WORDS.concat()
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert!(answer["choices"][0]["message"].get("tool_calls").is_none(), "{answer}");
    assert_eq!(
        strings(&answer["citations"]),
        [
            "https://docs.rs/tokio/latest/tokio/",
            "https://www.rust-lang.org/learn",
            "https://spam.example/rust",
            "https://archive.example/rust-2015",
        ]
    );
    let usage = &answer["usage"];
    assert_eq!(usage["num_server_side_tools_used"], 1);
    assert_eq!(usage["server_side_tool_usage_details"]["web_search_calls"], 1);
    assert_eq!(usage["server_side_tool_usage_details"]["x_search_calls"], 0);
    let cost = 2 * expected_cost() + FEE;
    assert_eq!(usage["cost_in_usd_ticks"], cost);
    assert_eq!(usage["prompt_tokens"], 2 * tollgate_testkit::PROMPT_TOKENS);

    // SearXNG was asked for JSON, with the model's query.
    let queries = stand_in.queries();
    assert_eq!(queries.len(), 1);
    assert_eq!(queries[0].0, "/search");
    assert_eq!(queries[0].1["format"], "json");
    assert_eq!(queries[0].1["q"], "rust runtime");
    // The model saw the results as a tool message: cleaned, framed as data, nothing executed.
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 2);
    let offered: Vec<&str> = requests[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["web_search"]);
    let messages = requests[1]["messages"].as_array().unwrap();
    let result = messages.iter().find(|m| m["role"] == "tool").unwrap();
    let text = result["content"].as_str().unwrap();
    assert!(text.contains("untrusted"), "{text}");
    assert!(
        text.contains("[1] tokio - Rust\nURL: https://docs.rs/tokio/latest/tokio/"),
        "{text}"
    );
    assert!(text.contains("reliable network applications & more."), "{text}");
    assert!(!text.contains('<') && !text.contains("ignore()"), "{text}");
    assert_eq!(result["tool_call_id"], "call_web_search_0_0");

    // One usage record, with the search and its fee; the invoice has a line for it.
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].usage.web_search_calls, 1);
    assert_eq!(usage[0].cost.get(), cost);
    assert_eq!(month_line(&app, TokenKind::WebSearch).await, Some((1, FEE)));
    let out = tollgate_cli(&app, &["billing", "verify"], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Deferred: the same loop runs in the background; the result carries the citations.
    let deferred = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "later"}], "deferred": true,
                "tools": [{"type": "web_search"}]}),
        )
        .await;
    let deferred: Value = deferred.json().await.unwrap();
    let id = deferred["request_id"].as_str().unwrap();
    let done = crate::deferred::poll_until_finished(&app, &key, id).await;
    assert_eq!(done.status(), StatusCode::OK);
    let done: Value = done.json().await.unwrap();
    assert_eq!(done["citations"][0], "https://docs.rs/tokio/latest/tokio/");
    assert_eq!(done["usage"]["cost_in_usd_ticks"], cost);

    // The listing says which tools the model may use, and their fees.
    let model = app.get_json(&format!("/v1/language-models/{MODEL}"), &key).await;
    assert_eq!(
        model["server_side_tools"],
        json!([{"type": "web_search", "price_per_call": FEE}, {"type": "x_search", "price_per_call": FEE}])
    );
    assert_eq!(model["search_price"], FEE);
    app.finish().await;
}

/// Domain filters are honoured whatever the backend does with `site:`; Live Search's
/// `search_parameters` set a date range; X search goes to X API v2 with the bearer token and the
/// handles as `from:`; Brave gets its key and `freshness`. Both tools in one request: a fee each.
async fn filters_dates_and_both_backends_are_honoured(db: TestDb) {
    let (app, stand_in) = app_with_search(db, true, |_| {}).await;
    let key = app.api_key().await;
    let excluded = ask(
        &app,
        &key,
        json!([{"type": "web_search", "excluded_domains": ["spam.example"]}]),
    )
    .await;
    assert!(!strings(&excluded["citations"]).contains(&"https://spam.example/rust"));
    let allowed = ask(
        &app,
        &key,
        json!([{"type": "web_search", "allowed_domains": ["docs.rs"]}]),
    )
    .await;
    assert_eq!(strings(&allowed["citations"]), ["https://docs.rs/tokio/latest/tokio/"]);
    let brave = &stand_in.queries()[1].1;
    assert_eq!(brave["q"], "rust runtime site:docs.rs");

    // Live Search's parameters: web only, from 2026 (the 2015 page is left out), 2 results.
    let live = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "rust"}],
                "search_parameters": {"mode": "auto", "from_date": "2026-01-01", "max_search_results": 2,
                    "sources": [{"type": "web"}]}}),
        )
        .await;
    assert_eq!(live.status(), StatusCode::OK);
    let live: Value = live.json().await.unwrap();
    assert_eq!(
        strings(&live["citations"]),
        ["https://docs.rs/tokio/latest/tokio/", "https://www.rust-lang.org/learn"]
    );
    let brave = &stand_in.queries()[2].1;
    assert_eq!(brave["freshness"], "2026-01-01to9999-12-31");

    // Both tools: the model calls both, each is charged.
    let both = ask(
        &app,
        &key,
        json!([{"type": "web_search"}, {"type": "x_search", "allowed_x_handles": ["@xai"], "from_date": "2026-11-01"}]),
    )
    .await;
    assert_eq!(both["usage"]["server_side_tool_usage_details"]["web_search_calls"], 1);
    assert_eq!(both["usage"]["server_side_tool_usage_details"]["x_search_calls"], 1);
    assert_eq!(both["usage"]["cost_in_usd_ticks"], 2 * expected_cost() + 2 * FEE);
    let citations = strings(&both["citations"]);
    assert!(
        citations.contains(&"https://x.com/xai/status/1862000000000000001"),
        "{citations:?}"
    );
    let x = stand_in
        .queries()
        .into_iter()
        .find(|(path, _)| path == "/2/tweets/search/recent")
        .unwrap()
        .1;
    assert_eq!(x["query"], "rust runtime from:xai");
    assert_eq!(x["start_time"], "2026-11-01T00:00:00Z");
    assert_eq!(x["max_results"], "10");
    assert_eq!(month_line(&app, TokenKind::XSearch).await, Some((1, FEE)));
    assert_eq!(month_line(&app, TokenKind::WebSearch).await, Some((4, 4 * FEE)));

    // Malformed options are a clear 400, before anything runs.
    let bad = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "web_search", "allowed_domains": ["a.org"], "excluded_domains": ["b.org"]}]}),
        )
        .await;
    assert_xai_error(
        bad,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "cannot be set together",
    )
    .await;
    app.finish().await;
}

/// A model that never stops asking is cut off after `max_rounds` search rounds: it is called
/// once more without the tools, and answers. A search deadline stops searching the same way.
async fn rounds_and_the_deadline_bound_the_loop(db: TestDb) {
    let (app, _stand_in) = app_with_search(db, false, |search| search.max_rounds = 2).await;
    app.upstream.search_rounds(100);
    let key = app.api_key().await;
    let answer = ask(&app, &key, json!([{"type": "web_search"}])).await;
    let requests = app.upstream.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests[2].get("tools").is_none(),
        "the last call offers no search: {}",
        requests[2]
    );
    assert_eq!(answer["usage"]["server_side_tool_usage_details"]["web_search_calls"], 2);
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], 3 * expected_cost() + 2 * FEE);
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        tollgate_testkit::ANSWER_WORDS.concat()
    );
    app.finish().await;

    // The deadline: one search takes longer than the whole search deadline, so no second round.
    let db = TestDb::sqlite().await;
    let (app, stand_in) = app_with_search(db, false, |search| {
        search.max_rounds = 5;
        search.deadline_seconds = 1;
    })
    .await;
    stand_in.delay(Duration::from_millis(1_200));
    app.upstream.search_rounds(100);
    let key = app.api_key().await;
    let answer = ask(&app, &key, json!([{"type": "web_search"}])).await;
    assert_eq!(app.upstream.requests().len(), 2);
    assert_eq!(answer["usage"]["server_side_tool_usage_details"]["web_search_calls"], 1);
    app.finish().await;
}

/// A backend that fails is reported to the model (which answers without it) and not charged;
/// the Responses API shows the call `failed`.
async fn a_failing_search_is_reported_and_not_charged(db: TestDb) {
    let (app, stand_in) = app_with_search(db, false, |_| {}).await;
    stand_in.fail(true);
    let key = app.api_key().await;
    let answer = ask(&app, &key, json!([{"type": "web_search"}])).await;
    assert_eq!(answer["usage"]["cost_in_usd_ticks"], 2 * expected_cost());
    assert!(answer.get("citations").is_none(), "{answer}");
    assert!(answer["usage"].get("server_side_tool_usage_details").is_none());
    let requests = app.upstream.requests();
    let result = requests[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    assert!(result["content"].as_str().unwrap().contains("not charged"), "{result}");
    assert_eq!(month_line(&app, TokenKind::WebSearch).await, None);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(r#"tollgate_server_side_tool_calls_total{tool="web_search",outcome="failed"} 1"#),
        "{metrics}"
    );

    let response = app
        .post(
            "/v1/responses",
            &key,
            json!({"model": MODEL, "input": "rust", "tools": [{"type": "web_search"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response: Value = response.json().await.unwrap();
    assert_eq!(response["output"][0]["type"], "web_search_call");
    assert_eq!(response["output"][0]["status"], "failed");
    assert_eq!(response["usage"]["num_server_side_tools_used"], 0);
    app.finish().await;
}

/// A tool with no backend is refused as not offered (400); a key without the tool's endpoint
/// ACL is refused (403); a model configured without the tool is refused (400). Nothing is
/// charged or sent upstream.
async fn tools_not_offered_or_not_granted_are_refused(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let stand_in = SearchStandIn::start().await.unwrap();
    config.search.web = Some(WebSearchConfig {
        backend: "searxng".into(),
        url: Some(stand_in.base_url.clone()),
        api_key: None,
    });
    let mut plain = config.models[MODEL].clone();
    plain.aliases = vec![];
    plain.server_side_tools = Some(vec![]);
    config.models.insert("plain".into(), plain);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let asked = |tool: &str, model: &str| json!({"model": model, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": tool}]});
    let x = app.chat(&key, asked("x_search", MODEL)).await;
    assert_xai_error(
        x,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "x_search is not offered here",
    )
    .await;
    let plain = app.chat(&key, asked("web_search", "plain")).await;
    assert_xai_error(
        plain,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "cannot use the tool web_search",
    )
    .await;
    let code = app.chat(&key, asked("code_interpreter", MODEL)).await;
    assert_xai_error(
        code,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "not offered here",
    )
    .await;
    let chat_only = app
        .create_api_key(json!({"name": "chat only", "acls": ["api-key:endpoint:chat", "api-key:model:*"]}))
        .await;
    let chat_only = chat_only["apiKey"].as_str().unwrap();
    let denied = app.chat(chat_only, asked("web_search", MODEL)).await;
    assert_xai_error(
        denied,
        StatusCode::FORBIDDEN,
        "The caller does not have permission to execute the specified operation",
        "access to the web_search endpoint is denied",
    )
    .await;
    let granted = app
        .create_api_key(
            json!({"name": "search", "acls": ["api-key:endpoint:chat", "api-key:endpoint:web_search",
            "api-key:model:*"]}),
        )
        .await;
    let granted = granted["apiKey"].as_str().unwrap();
    assert_eq!(
        app.chat(granted, asked("web_search", MODEL)).await.status(),
        StatusCode::OK
    );
    // Only the granted request reached the model (twice: the search, then the answer).
    assert_eq!(app.upstream.requests().len(), 2);
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 1);
    // The endpoint names are listed for ACL pickers.
    let endpoints = app
        .client
        .get(app.url(&format!("/auth/teams/{}/endpoints", app.team.id)))
        .bearer_auth(&app.management_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        endpoints.contains("web_search") && endpoints.contains("x_search"),
        "{endpoints}"
    );
    app.finish().await;
}

/// Streamed: each search is shown as it finishes (a tool call whose type names the server-side
/// tool, with its query and sources), then the answer, then the usage with the fee, then
/// `[DONE]`. The Responses API streams a `web_search_call` item, then the message, and its
/// final response carries the citations.
async fn searches_are_streamed_then_the_answer(db: TestDb) {
    let (app, _stand_in) = app_with_search(db, false, |_| {}).await;
    let key = app.api_key().await;
    let response = app
        .chat(
            &key,
            json!({"model": MODEL, "messages": [{"role": "user", "content": "rust runtime"}], "stream": true,
                "tools": [{"type": "web_search"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    let events: Vec<&str> = body
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // The search first (before any word of the answer), then the answer word by word as the
    // model writes it, its last chunk with the citations, then the usage.
    let search = chunks
        .iter()
        .position(|c| c["choices"][0]["delta"].get("tool_calls").is_some())
        .unwrap();
    let call = &chunks[search]["choices"][0]["delta"]["tool_calls"][0];
    assert_eq!(call["type"], "web_search");
    assert_eq!(call["status"], "completed");
    assert_eq!(
        call["function"]["arguments"],
        json!({"query": "rust runtime"}).to_string()
    );
    assert_eq!(call["sources"][0], "https://docs.rs/tokio/latest/tokio/");
    let words: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|word| !word.is_empty())
        .collect();
    assert_eq!(words, tollgate_testkit::ANSWER_WORDS);
    let first_word = chunks
        .iter()
        .position(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|w| !w.is_empty())
        })
        .unwrap();
    assert!(search < first_word);
    let last = chunks
        .iter()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["citations"][0], "https://docs.rs/tokio/latest/tokio/");
    assert!(
        chunks.iter().all(|c| c["model"].is_null() || c["model"] == MODEL),
        "{body}"
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["cost_in_usd_ticks"], 2 * expected_cost() + FEE);
    assert_eq!(usage["server_side_tool_usage_details"]["web_search_calls"], 1);

    let response = app
        .post(
            "/v1/responses",
            &key,
            json!({"model": MODEL, "input": "rust runtime", "stream": true, "tools": [{"type": "web_search"}]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    let kinds: Vec<&str> = body.lines().filter_map(|line| line.strip_prefix("event: ")).collect();
    let added = kinds
        .iter()
        .position(|k| *k == "response.web_search_call.completed")
        .unwrap();
    let text = kinds.iter().position(|k| *k == "response.output_text.delta").unwrap();
    assert!(added < text, "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"));
    let completed: Value = serde_json::from_str(
        body.lines()
            .filter_map(|line| line.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap();
    let final_response = &completed["response"];
    assert_eq!(final_response["output"][0]["type"], "web_search_call");
    assert_eq!(final_response["output"][0]["action"]["query"], "rust runtime");
    assert_eq!(final_response["output"][1]["type"], "message");
    assert_eq!(final_response["citations"][0], "https://docs.rs/tokio/latest/tokio/");
    assert_eq!(
        final_response["usage"]["server_side_tool_usage_details"]["web_search_calls"],
        1
    );
    assert_eq!(final_response["usage"]["cost_in_usd_ticks"], 2 * expected_cost() + FEE);
    // Two requests, each charged once: two model calls and a search.
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 2);
    assert!(usage.iter().all(|u| u.cost.get() == 2 * expected_cost() + FEE));
    app.finish().await;
}

/// The official `openai` SDK's Responses call with `tools=[{"type": "web_search"}]`, unchanged.
async fn the_openai_sdk_searches_unchanged(db: TestDb) {
    let (app, _stand_in) = app_with_search(db, false, |_| {}).await;
    let key = app.api_key().await;
    let script = format!(
        r#"
from openai import OpenAI
client = OpenAI(base_url={base:?}, api_key={key:?}, max_retries=0, timeout=30)
response = client.responses.create(model={model:?}, input="rust runtime", tools=[{{"type": "web_search"}}])
assert response.output_text == {answer:?}, response
kinds = [item.type for item in response.output]
assert kinds == ["web_search_call", "message"], kinds
assert response.output[0].status == "completed"
assert response.model_extra["citations"][0] == "https://docs.rs/tokio/latest/tokio/", response.model_extra
details = response.usage.model_extra["server_side_tool_usage_details"]
assert details["web_search_calls"] == 1, details
assert response.usage.model_extra["cost_in_usd_ticks"] == {cost}, response.usage

chat = client.chat.completions.create(model={model:?}, messages=[{{"role": "user", "content": "rust"}}],
    tools=[{{"type": "web_search"}}])
assert chat.choices[0].message.content == {answer:?}
assert not chat.choices[0].message.tool_calls
assert chat.model_extra["citations"], chat
print("ok")
"#,
        base = app.url("/v1"),
        key = key,
        model = MODEL,
        answer = tollgate_testkit::ANSWER_WORDS.concat(),
        cost = 2 * expected_cost() + FEE,
    );
    let out = tokio::task::spawn_blocking(move || std::process::Command::new("python3").args(["-c", &script]).output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "the openai SDK failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    app.finish().await;
}
