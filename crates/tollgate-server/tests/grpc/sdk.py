"""The official xAI SDK (xai-sdk from PyPI, gRPC) against a Tollgate started by the test
(tests/it/grpc.rs), asserting the SDK's own objects. Prints "ok" when every check passed.

    python sdk.py PHASE CONFIG_JSON

PHASE is "main" (sample, stream, defer, stored completions, models, tokenize, key info,
refusals, images, embeddings, an insecure channel, keep-alive pings), "tools" (the model calls
the client's function), "failing" (a deferred completion the model server refuses), "search"
(a server-side web search) or "tls" (the SDK's default TLS channel).
"""

import datetime
import json
import sys
import threading
import time

import grpc
from xai_sdk import Client
from xai_sdk.chat import tool, user

phase, config = sys.argv[1], json.loads(sys.argv[2])
port, key, model = config["port"], config["key"], config["model"]
answer, cost = config["answer"], config["cost"]
host = f"localhost:{port}"  # the SDK's rule: "localhost:" means plaintext to loopback


def expect_error(call, code, details):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == code, (error.code(), error.details())
        assert error.details() == details, error.details()
        return
    sys.exit(f"expected {code}, but the call succeeded")


client = Client(api_key=key, api_host=host, timeout=60)

if phase == "tls":
    # The SDK's default channel (TLS, the system's roots; the test's CA comes through
    # GRPC_DEFAULT_SSL_ROOTS_FILE_PATH) to an address, as to a deployed server.
    secure = Client(api_key=key, api_host=f"127.0.0.1:{port}", timeout=60)
    assert secure.auth.get_api_key_info().team_id == config["team_id"]
    chat = secure.chat.create(model=model, max_tokens=20)
    chat.append(user("Say hello"))
    response = chat.sample()
    assert response.content == answer and response.usage.cost_in_usd_ticks == cost, response
    print("ok")
    sys.exit(0)

if phase == "search":
    # A server-side tool: Tollgate runs the searches and the model answers with citations.
    from xai_sdk.proto import chat_pb2, usage_pb2
    from xai_sdk.tools import web_search

    chat = client.chat.create(model=model, max_tokens=20, tools=[web_search()])
    chat.append(user("rust runtime"))
    response = chat.sample()
    assert response.content == answer, response.content
    assert list(response.citations) == config["citations"], response.citations
    assert response.usage.cost_in_usd_ticks == config["search_cost"], response.usage
    assert list(response.usage.server_side_tools_used) == [usage_pb2.SERVER_SIDE_TOOL_WEB_SEARCH], response.usage

    # Streamed, the search shows as it finishes: a tool call of the search's type.
    chat = client.chat.create(model=model, max_tokens=20, tools=[web_search()])
    chat.append(user("rust runtime"))
    searches = []
    for response, chunk in chat.stream():
        searches += [call for call in chunk.tool_calls if call.type == chat_pb2.TOOL_CALL_TYPE_WEB_SEARCH_TOOL]
    [search] = searches
    assert search.status == chat_pb2.TOOL_CALL_STATUS_COMPLETED, search
    assert json.loads(search.function.arguments) == {"query": "rust runtime"}, search
    assert response.content == answer, response.content
    assert list(response.citations) == config["citations"], response.citations
    assert response.usage.cost_in_usd_ticks == config["search_cost"], response.usage
    print("ok")
    sys.exit(0)

if phase == "failing":
    # The model server refuses: the deferred completion fails, and its poll is that error (the
    # SDK cannot read a FAILED status), not charged.
    chat = client.chat.create(model=model, max_tokens=20)
    chat.append(user("Say hello"))
    expect_error(
        lambda: chat.defer(timeout=datetime.timedelta(seconds=30), interval=datetime.timedelta(milliseconds=100)),
        grpc.StatusCode.INVALID_ARGUMENT,
        config["refusal"],
    )
    print("ok")
    sys.exit(0)

if phase == "tools":
    weather = tool(
        name="lookup",
        description="Looks something up",
        parameters={"type": "object", "properties": {"q": {"type": "string"}}},
    )
    chat = client.chat.create(model=model, max_tokens=20, tools=[weather])
    chat.append(user("What is the weather?"))
    response = chat.sample()
    assert response.finish_reason == "REASON_TOOL_CALLS", response.finish_reason
    [call] = response.tool_calls
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "x"}, call
    assert response.usage.cost_in_usd_ticks == cost, response.usage

    chat = client.chat.create(model=model, max_tokens=20, tools=[weather])
    chat.append(user("What is the weather?"))
    last = None
    for last, _chunk in chat.stream():
        pass
    assert last.finish_reason == "REASON_TOOL_CALLS", last.finish_reason
    [call] = last.tool_calls
    assert call.id == "call_mock" and call.function.name == "lookup", call
    assert last.usage.cost_in_usd_ticks == cost, last.usage
    print("ok")
    sys.exit(0)

# A whole answer: the text, the finish reason, the usage with its cost in ticks.
chat = client.chat.create(model=model, max_tokens=20)
chat.append(user("Say hello"))
response = chat.sample()
assert response.content == answer, response.content
assert response.finish_reason == "REASON_STOP", response.finish_reason
assert response.usage.cost_in_usd_ticks == cost, response.usage
assert response.usage.prompt_tokens == config["prompt_tokens"], response.usage
assert response.usage.completion_tokens == config["completion_tokens"], response.usage
assert response.usage.cached_prompt_text_tokens == config["cached_tokens"], response.usage
assert response.cost_usd is not None and abs(response.cost_usd - cost / 1e10) < 1e-12, response.cost_usd
assert response.proto.model == model, response.proto.model

# Streamed: the chunks add up to the answer; the last carries the usage and its cost.
chat = client.chat.create(model=model, max_tokens=20)
chat.append(user("Say hello"))
pieces = []
for response, chunk in chat.stream():
    pieces.append(chunk.content)
assert "".join(pieces) == answer, pieces
assert len([piece for piece in pieces if piece]) > 1, pieces
assert response.content == answer, response.content
assert response.finish_reason == "REASON_STOP", response.finish_reason
assert response.usage.cost_in_usd_ticks == cost, response.usage

# Deferred: started, polled, returned once.
chat = client.chat.create(model=model, max_tokens=20)
chat.append(user("Say hello"))
response = chat.defer(timeout=datetime.timedelta(seconds=30), interval=datetime.timedelta(milliseconds=100))
assert response.content == answer, response.content
assert response.usage.cost_in_usd_ticks == cost, response.usage

# Stored completions: kept with store_messages, continued with previous_response_id (the
# conversation is sent again), read back and deleted.
chat = client.chat.create(model=model, max_tokens=20, store_messages=True)
chat.append(user("Remember: blue"))
first = chat.sample()
[stored] = client.chat.get_stored_completion(first.id)
assert stored.content == answer and stored.finish_reason == "REASON_STOP", stored
assert stored.usage.cost_in_usd_ticks == cost, stored.usage
chat = client.chat.create(model=model, max_tokens=20, store_messages=True, previous_response_id=first.id)
chat.append(user("What colour?"))
for second, _chunk in chat.stream():
    pass
assert second.content == answer, second.content
assert second.id and second.id != first.id, (first.id, second.id)
[stored] = client.chat.get_stored_completion(second.id)
assert stored.content == answer, stored
assert client.chat.delete_stored_completion(first.id) == first.id
expect_error(
    lambda: client.chat.get_stored_completion(first.id),
    grpc.StatusCode.NOT_FOUND,
    f"The response {first.id} does not exist or has expired.",
)
chat = client.chat.create(model=model, max_tokens=20, previous_response_id=first.id)
chat.append(user("And now?"))
expect_error(chat.sample, grpc.StatusCode.INVALID_ARGUMENT, f"Previous response with id '{first.id}' not found.")
print("stored", second.id)

# Models, by kind and by alias, with their prices.
names = [m.name for m in client.models.list_language_models()]
assert names == [model], names
language = client.models.get_language_model(config["alias"])
assert language.name == model and config["alias"] in language.aliases, language
assert language.prompt_text_token_price == config["prompt_price"], language
assert language.completion_text_token_price == config["completion_price"], language
assert language.system_fingerprint.startswith("fp_"), language
assert [m.name for m in client.models.list_embedding_models()] == [model]
expect_error(
    lambda: client.models.get_language_model("nope"),
    grpc.StatusCode.NOT_FOUND,
    "The model nope does not exist or your team does not have access to it.",
)

# Tokenize with the model's tokenizer (cl100k_base).
tokens = client.tokenize.tokenize_text("hello world", model)
assert [t.token_id for t in tokens] == [15339, 1917], tokens
assert [t.string_token for t in tokens] == ["hello", " world"], tokens

# The key's own information.
info = client.auth.get_api_key_info()
assert info.team_id == config["team_id"], info
assert info.api_key_id == config["key_id"], info
assert info.redacted_api_key == config["redacted"], info
assert list(info.acls) == ["api-key:endpoint:*", "api-key:model:*"], info
assert not info.api_key_blocked and not info.disabled and not info.team_blocked, info

# Refusals, as statuses with xAI's texts.
narrow = Client(api_key=config["narrow_key"], api_host=host, timeout=60)
chat = narrow.chat.create(model=model, max_tokens=20)
chat.append(user("Say hello"))
expect_error(chat.sample, grpc.StatusCode.PERMISSION_DENIED, f"access to model {model} is denied")

# No key at all (the SDK always sends one: its generated stub on a bare channel does not).
from xai_sdk.proto import auth_pb2_grpc  # noqa: E402
from google.protobuf import empty_pb2  # noqa: E402

bare = auth_pb2_grpc.AuthStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
expect_error(
    lambda: bare.get_api_key_info(empty_pb2.Empty()),
    grpc.StatusCode.UNAUTHENTICATED,
    "No API key provided. Send it in the authorization metadata as 'Bearer <key>'.",
)

wrong = Client(api_key=config["wrong_key"], api_host=host, timeout=60)
expect_error(wrong.auth.get_api_key_info, grpc.StatusCode.INVALID_ARGUMENT, config["wrong_key_text"])

# A message above gRPC's default 4 MiB (the SDK's limit is 20 MiB) is read: refused only for
# what its prompt would cost.
chat = client.chat.create(model=model, max_tokens=20)
chat.append(user("a" * (6 * 1024 * 1024)))
expect_error(chat.sample, grpc.StatusCode.RESOURCE_EXHAUSTED, config["out_of_credit_text"])

# Eight answers of 16,000 tokens each are held for before the model is asked: more than the team's
# credit.
chat = client.chat.create(model=model, max_tokens=16000)
chat.append(user("Say hello"))
expect_error(lambda: chat.sample_batch(8), grpc.StatusCode.RESOURCE_EXHAUSTED, config["out_of_credit_text"])

chat = client.chat.create(model="nope", max_tokens=20)
chat.append(user("Say hello"))
expect_error(
    chat.sample,
    grpc.StatusCode.NOT_FOUND,
    "The model nope does not exist or your team does not have access to it.",
)

# Images, priced per image: as a data URL (the SDK decodes it), and as URLs.
image = client.image.sample(prompt="a lighthouse", model="imagine", image_format="base64")
assert image.base64.startswith("data:image/png;base64,"), image.base64
assert image.image.startswith(b"\x89PNG"), image.image
assert image.usage.cost_in_usd_ticks == config["image_price_ticks"], image.usage
assert image.model == "imagine", image.model
images = client.image.sample_batch(prompt="a lighthouse", model="imagine", n=2, image_format="url")
assert [i.url for i in images] == ["https://images.example/0.png", "https://images.example/1.png"], images
assert images[0].usage.cost_in_usd_ticks == 2 * config["image_price_ticks"], images[0].usage

# Embeddings: the SDK has no helper, its generated stub does.
from xai_sdk.proto import embed_pb2, embed_pb2_grpc  # noqa: E402

embedder = embed_pb2_grpc.EmbedderStub(client._api_channel)
embedded = embedder.Embed(
    embed_pb2.EmbedRequest(
        model=model,
        input=[embed_pb2.EmbedInput(string="one"), embed_pb2.EmbedInput(string="two")],
        encoding_format=embed_pb2.FORMAT_FLOAT,
    )
)
assert [list(e.embeddings[0].float_array) for e in embedded.embeddings] == [[0.25, -0.5, 0.125]] * 2, embedded
assert embedded.usage.num_text_embeddings == 2 and embedded.model == model, embedded
expect_error(
    lambda: embedder.Embed(embed_pb2.EmbedRequest(model=model)),
    grpc.StatusCode.INVALID_ARGUMENT,
    "input must not be empty",
)

# The SDK's insecure channel (any address; the key goes in an interceptor).
insecure = Client(api_key=key, api_host=f"127.0.0.1:{port}", use_insecure_channel=True, timeout=60)
assert insecure.auth.get_api_key_info().team_id == config["team_id"]

# Keep-alive pings every 2 s (stricter than the SDK's 30 s) for 20 s on an idle channel: the
# server must not close it (no GOAWAY "too_many_pings").
pinging = Client(
    api_key=key,
    api_host=host,
    timeout=60,
    channel_options=[("grpc.keepalive_time_ms", 2000), ("grpc.keepalive_timeout_ms", 1000)],
)
assert pinging.auth.get_api_key_info().team_id == config["team_id"]
states = []
changed = threading.Event()


def watch(state):
    states.append(state)
    if state != grpc.ChannelConnectivity.READY:
        changed.set()


pinging._api_channel.subscribe(watch, try_to_connect=False)
time.sleep(config.get("idle_seconds", 20))
assert not changed.is_set(), f"the idle channel was closed: {states}"
assert pinging.auth.get_api_key_info().team_id == config["team_id"]
print("ok")
