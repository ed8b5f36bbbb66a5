//! `/v1/responses`: the Responses API over the upstream's chat completions — billed like chat,
//! stored per team (sealed) for the retention, continued with `previous_response_id` (the stored
//! conversation sent again and billed as prompt), streamed as typed events; and the official
//! `openai` Python SDK against it.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tollgate_domain::Clock as _;
use tollgate_store::testsuite::TestDb;
use tollgate_testkit::ANSWER_WORDS;

use crate::util::{MODEL, TestApp, UPSTREAM_MODEL, assert_xai_error, expected_cost, on_both_backends};

on_both_backends!(
    responses_are_billed_stored_and_continued,
    stored_responses_are_the_teams_own_and_expire,
    streamed_responses_are_typed_events,
    what_is_not_offered_is_refused_clearly,
    the_openai_sdk_works_unchanged,
);

async fn create(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.post("/v1/responses", key, body).await
}

async fn created(app: &TestApp, key: &str, body: Value) -> Value {
    let response = create(app, key, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn output_text(response: &Value) -> String {
    response["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item["type"] == "message")
        .flat_map(|item| item["content"].as_array().unwrap().iter())
        .filter_map(|part| part["text"].as_str())
        .collect()
}

/// A response is charged as chat is (the usage record, `cost_in_usd_ticks`), kept with its
/// conversation, fetched as it was answered, continued with the whole conversation sent again
/// (instructions only for their own turn), and gone once deleted. `store: false` keeps nothing.
async fn responses_are_billed_stored_and_continued(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let first = created(
        &app,
        &key,
        json!({"model": MODEL, "input": "Hi there", "instructions": "Be brief.", "metadata": {"ticket": "7"}}),
    )
    .await;
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["model"], MODEL);
    assert_eq!(first["instructions"], "Be brief.");
    assert_eq!(first["metadata"], json!({"ticket": "7"}));
    assert_eq!(first["store"], true);
    assert_eq!(output_text(&first), ANSWER_WORDS.concat());
    assert_eq!(first["usage"]["input_tokens"], tollgate_testkit::PROMPT_TOKENS);
    assert_eq!(first["usage"]["output_tokens"], tollgate_testkit::COMPLETION_TOKENS);
    assert_eq!(first["usage"]["cost_in_usd_ticks"], expected_cost());
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["model"], UPSTREAM_MODEL);
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}])
    );
    assert_eq!(
        sent["max_tokens"], 16_384,
        "the upstream is held to the budget the hold assumed"
    );
    let usage = app.store().list_usage(app.team.id, 10).await.unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].endpoint, tollgate_domain::Endpoint::Chat);
    assert_eq!(usage[0].cost.get(), expected_cost());

    // Fetched as answered.
    let fetched = app.get_json(&format!("/v1/responses/{id}"), &key).await;
    assert_eq!(fetched, first);

    // Continued: the stored conversation goes first, this turn's input after it.
    let second = created(
        &app,
        &key,
        json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": "And again?"}]}],
               "previous_response_id": id}),
    )
    .await;
    assert_eq!(second["previous_response_id"], id.as_str());
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": ANSWER_WORDS.concat()},
            {"role": "user", "content": [{"type": "text", "text": "And again?"}]},
        ]),
        "instructions apply to their own turn only"
    );
    // A third turn chains through the second.
    let second_id = second["id"].as_str().unwrap();
    created(
        &app,
        &key,
        json!({"model": MODEL, "input": "Third", "previous_response_id": second_id, "store": false}),
    )
    .await;
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["messages"].as_array().unwrap().len(), 5);
    assert_eq!(app.store().list_usage(app.team.id, 10).await.unwrap().len(), 3);

    // `store: false` keeps nothing.
    let unstored = created(&app, &key, json!({"model": MODEL, "input": "x", "store": false})).await;
    assert_eq!(unstored["store"], false);
    let missing = app
        .client
        .get(app.url(&format!("/v1/responses/{}", unstored["id"].as_str().unwrap())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_xai_error(
        missing,
        StatusCode::NOT_FOUND,
        "Some requested entity was not found",
        "does not exist",
    )
    .await;

    // Deleted: gone, and cannot be continued.
    let deleted = app
        .client
        .delete(app.url(&format!("/v1/responses/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(
        deleted.json::<Value>().await.unwrap(),
        json!({"id": id, "object": "response", "deleted": true})
    );
    let again = app
        .client
        .delete(app.url(&format!("/v1/responses/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    let continued = create(
        &app,
        &key,
        json!({"model": MODEL, "input": "x", "previous_response_id": id}),
    )
    .await;
    assert_xai_error(
        continued,
        StatusCode::BAD_REQUEST,
        "Client specified an invalid argument",
        "not found",
    )
    .await;
    app.finish().await;
}

/// Another team's key finds nothing — not by fetching, continuing or deleting — and the sealed
/// rows hold no readable text; after the retention a response is gone, and the sweep deletes it.
async fn stored_responses_are_the_teams_own_and_expire(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    let mine = created(&app, &key, json!({"model": MODEL, "input": "a secret plan"})).await;
    let id = mine["id"].as_str().unwrap();
    let (other_team, other_caller, _, other_key) = app.team_with_key("Other").await;
    let path = format!("/v1/responses/{id}");
    let fetched = app
        .client
        .get(app.url(&path))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::NOT_FOUND);
    let deleted = app
        .client
        .delete(app.url(&path))
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    let continued = create(
        &app,
        &other_key,
        json!({"model": MODEL, "input": "x", "previous_response_id": id}),
    )
    .await;
    assert_eq!(continued.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.upstream.requests().len(),
        1,
        "nothing of it reached the upstream for the other team"
    );
    // Sealed at rest.
    let row = app
        .store()
        .stored_response(app.team.id, id, app.clock.now())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&row.sealed);
    assert!(!text.contains("secret plan") && !text.contains("mock upstream"));

    // A deleted team's responses go with it, not at the end of their retention.
    let theirs = created(&app, &other_key, json!({"model": MODEL, "input": "theirs"})).await;
    let theirs = theirs["id"].as_str().unwrap();
    app.services()
        .teams
        .delete_team(&other_caller, "Other", &tollgate_domain::RequestContext::default())
        .await
        .unwrap();
    let gone = app
        .store()
        .stored_response(other_team.id, theirs, app.clock.now())
        .await
        .unwrap();
    assert!(gone.is_none());

    // Past the retention (30 days): not found, then swept.
    app.clock
        .advance(chrono::Duration::days(30) + chrono::Duration::seconds(1));
    let fetched = app.client.get(app.url(&path)).bearer_auth(&key).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::NOT_FOUND);
    let store = std::sync::Arc::clone(&app.server.as_ref().unwrap().store);
    let swept = tollgate_core::Housekeeping::new(store, app.clock.clone())
        .run()
        .await
        .unwrap();
    assert_eq!(swept.responses, 1);
    app.finish().await;
}

/// The SSE events of a streamed response, as (type, data).
async fn read_events(response: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut kind = String::new();
            let mut data = Value::Null;
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    kind = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(value).unwrap();
                }
            }
            assert_eq!(data["type"], kind.as_str());
            (kind, data)
        })
        .collect()
}

/// A streamed response: `response.created`, the items' events as the words arrive (and a tool
/// call whole), then `response.completed` with the usage and its cost — charged and stored
/// before that last event, so it can be fetched and continued at once.
async fn streamed_responses_are_typed_events(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    app.upstream.call_tool_with(Some("{\"city\":\"Paris\"}".into()));
    let response = create(
        &app,
        &key,
        json!({"model": MODEL, "input": "Weather?", "stream": true,
               "tools": [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]}),
    )
    .await;
    let events = read_events(response).await;
    let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        kinds[..3],
        ["response.created", "response.in_progress", "response.output_item.added"]
    );
    let deltas: String = events
        .iter()
        .filter(|(kind, _)| kind == "response.output_text.delta")
        .map(|(_, data)| data["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, ANSWER_WORDS.concat());
    assert_eq!(kinds.last(), Some(&"response.completed"));
    for (number, (_, data)) in events.iter().enumerate() {
        assert_eq!(data["sequence_number"], number as u64);
    }
    let completed = &events.last().unwrap().1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["usage"]["cost_in_usd_ticks"], expected_cost());
    let call = completed["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["type"] == "function_call")
        .unwrap();
    assert_eq!(call["name"], "lookup");
    assert_eq!(call["arguments"], "{\"city\":\"Paris\"}");
    let sent = app.upstream.requests().pop().unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["tools"][0]["function"]["name"], "lookup");
    assert_eq!(
        app.store().list_usage(app.team.id, 10).await.unwrap()[0].cost.get(),
        expected_cost()
    );

    // Stored: continued with the tool's output, which goes to the upstream as a tool message.
    let id = completed["id"].as_str().unwrap();
    let fetched = app.get_json(&format!("/v1/responses/{id}"), &key).await;
    assert_eq!(&fetched, completed);
    app.upstream.call_tool_with(None);
    let call_id = call["call_id"].as_str().unwrap();
    created(
        &app,
        &key,
        json!({"model": MODEL, "previous_response_id": id,
               "input": [{"type": "function_call_output", "call_id": call_id, "output": "sunny"}]}),
    )
    .await;
    let sent = app.upstream.requests().pop().unwrap();
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[1]["tool_calls"][0]["id"], call_id);
    assert_eq!(
        messages[2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "sunny"})
    );

    // An upstream that fails before producing anything: `response.failed`, nothing charged.
    app.upstream.fail_with(500, "boom");
    let response = create(&app, &key, json!({"model": MODEL, "input": "x", "stream": true})).await;
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    app.upstream.recover();
    app.upstream.cut_streams(true);
    let response = create(&app, &key, json!({"model": MODEL, "input": "x", "stream": true})).await;
    let events = read_events(response).await;
    let (kind, data) = events.last().unwrap();
    assert_eq!(kind, "response.failed");
    assert_eq!(data["response"]["status"], "failed");
    app.finish().await;
}

/// Fields, tools and inputs this platform does not offer are 400s that name them, before the
/// upstream is called or anything is charged; the endpoint ACL is `chat`'s.
async fn what_is_not_offered_is_refused_clearly(db: TestDb) {
    let app = TestApp::new(db).await;
    let key = app.api_key().await;
    for (body, text) in [
        (
            json!({"model": MODEL, "input": "x", "conversation": "c_1"}),
            "Unsupported parameter: conversation",
        ),
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "web_search"}]}),
            "The tool web_search is not offered here: this platform has no backend configured for it",
        ),
        (
            json!({"model": MODEL, "input": "x", "tools": [{"type": "code_interpreter"}]}),
            "The tool \"code_interpreter\" is not offered here",
        ),
        (
            json!({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
            "file inputs are not offered here",
        ),
        (json!({"model": MODEL, "input": []}), "input must not be empty"),
        (
            json!({"model": MODEL, "input": "x", "max_output_tokens": 0}),
            "max_output_tokens must be at least 1",
        ),
        (
            json!({"model": MODEL, "input": "x", "background": true}),
            "background responses are not offered",
        ),
    ] {
        assert_xai_error(
            create(&app, &key, body).await,
            StatusCode::BAD_REQUEST,
            "Client specified an invalid argument",
            text,
        )
        .await;
    }
    let wrong_type = create(&app, &key, json!({"model": MODEL, "input": 5})).await;
    assert_eq!(wrong_type.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let unknown = create(&app, &key, json!({"model": "no-such", "input": "x"})).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(app.upstream.requests().is_empty());
    assert!(app.store().list_usage(app.team.id, 10).await.unwrap().is_empty());

    let embeddings_only = app
        .create_api_key(json!({"name": "embed", "acls": ["api-key:endpoint:embeddings", "api-key:model:*"]}))
        .await["apiKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let denied = create(&app, &embeddings_only, json!({"model": MODEL, "input": "x"})).await;
    assert_xai_error(
        denied,
        StatusCode::FORBIDDEN,
        "The caller does not have permission to execute the specified operation",
        "chat",
    )
    .await;
    let fetch = app
        .client
        .get(app.url("/v1/responses/resp_x"))
        .bearer_auth(&embeddings_only)
        .send()
        .await
        .unwrap();
    assert_eq!(fetch.status(), StatusCode::FORBIDDEN);
    app.finish().await;
}

/// The official `openai` Python SDK, pointed at Tollgate with a base URL, unchanged: chat
/// (whole and streamed), responses (created, continued with `previous_response_id`, streamed,
/// retrieved, deleted), legacy completions, embeddings and the model list.
async fn the_openai_sdk_works_unchanged(db: TestDb) {
    let upstream = tollgate_testkit::MockUpstream::start().await.unwrap();
    let mut config = crate::util::test_config(&db, &upstream);
    let mut imagine = config.models[MODEL].clone();
    imagine.aliases = vec![];
    imagine.image_price = Some(7);
    imagine.endpoints = vec!["image".into()];
    config.models.insert("imagine".into(), imagine);
    let app = TestApp::with_config(db, upstream, config).await;
    let key = app.api_key().await;
    let script = format!(
        r#"
import sys
from openai import OpenAI, NotFoundError
client = OpenAI(base_url={base:?}, api_key={key:?}, max_retries=0, timeout=30)
model = {model:?}

chat = client.chat.completions.create(model=model, messages=[{{"role": "user", "content": "hi"}}])
assert chat.choices[0].message.content == {answer:?}, chat
assert chat.model == model
cost = chat.usage.model_extra["cost_in_usd_ticks"]
assert cost == {cost}, chat.usage

text = ""
for chunk in client.chat.completions.create(model=model, messages=[{{"role": "user", "content": "hi"}}], stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
assert text == {answer:?}, text

first = client.responses.create(model=model, input="Hi", instructions="Be brief.")
assert first.output_text == {answer:?}, first
assert first.status == "completed"
second = client.responses.create(model=model, input="Again", previous_response_id=first.id)
assert second.previous_response_id == first.id
assert client.responses.retrieve(first.id).output_text == {answer:?}

kinds = []
final = None
for event in client.responses.create(model=model, input="Stream it", stream=True):
    kinds.append(event.type)
    if event.type == "response.completed":
        final = event.response
assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
assert "response.output_text.delta" in kinds, kinds
assert final.output_text == {answer:?}

with client.responses.stream(model=model, input="Helper") as stream:
    for _ in stream:
        pass
    assert stream.get_final_response().output_text == {answer:?}

client.responses.delete(first.id)
try:
    client.responses.retrieve(first.id)
    sys.exit("a deleted response was found")
except NotFoundError:
    pass

completion = client.completions.create(model=model, prompt="Say hello", max_tokens=8)
assert completion.choices[0].text == {answer:?}, completion

embedding = client.embeddings.create(model=model, input="text")
assert len(embedding.data[0].embedding) == 3
assert model in [m.id for m in client.models.list()]
assert client.models.retrieve(model).id == model

image = client.images.generate(model="imagine", prompt="a lighthouse", n=2, response_format="b64_json")
assert len(image.data) == 2 and image.data[0].b64_json, image
assert image.usage.model_extra["cost_in_usd_ticks"] == 2 * 700000000, image.usage
print("ok")
"#,
        base = app.url("/v1"),
        key = key,
        model = MODEL,
        answer = ANSWER_WORDS.concat(),
        cost = expected_cost(),
    );
    // The server runs on this test's runtime: wait for the script off it.
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
    // Every call was billed: 2 chats, 4 responses, 1 completion, 1 embedding, 1 image request.
    assert_eq!(app.store().list_usage(app.team.id, 20).await.unwrap().len(), 9);
    app.finish().await;
}
