"""Checks that the official `openai` SDK works against a running tollgate unchanged.

Usage: pip install openai; python3 scripts/openai_sdk_check.py API_KEY MODEL [BASE_URL]
"""
import sys

from openai import BadRequestError, OpenAI

key, model = sys.argv[1], sys.argv[2]
base_url = sys.argv[3] if len(sys.argv) > 3 else "http://127.0.0.1:8080/v1"
client = OpenAI(base_url=base_url, api_key=key)
messages = [{"role": "user", "content": "Say hello."}]

answer = client.chat.completions.create(model=model, messages=messages)
print("chat:", repr(answer.choices[0].message.content), "usage:", answer.usage.model_dump())

text = ""
for chunk in client.chat.completions.create(model=model, messages=messages, stream=True):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        print("stream usage:", chunk.usage.model_dump())
print("stream:", repr(text))

try:
    OpenAI(base_url=base_url, api_key="tgk_wrong").chat.completions.create(model=model, messages=messages)
except BadRequestError as error:
    print("wrong key refused:", error.status_code, error.body)
