"""Official client libraries against a running Tollgate proxy.

Driven by `proxy/tests/sdk_clients.rs`, which starts the mock upstream and the proxy and passes
TOLLGATE_SDK_URL and TOLLGATE_SDK_KEY. Run alone with those variables set.
"""

import os

import anthropic
import openai
import pytest

URL = os.environ.get("TOLLGATE_SDK_URL")
KEY = os.environ.get("TOLLGATE_SDK_KEY")
pytestmark = pytest.mark.skipif(not URL, reason="TOLLGATE_SDK_URL not set (run through cargo test)")


def oai():
    return openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0)


def claude():
    return anthropic.Anthropic(base_url=URL, api_key=KEY, max_retries=0)


def test_openai_chat():
    r = oai().chat.completions.create(
        model="gpt-mock", messages=[{"role": "user", "content": "say three words"}], max_tokens=3
    )
    assert r.model == "gpt-mock"
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 3


def test_openai_stream_with_usage():
    chunks = list(
        oai().chat.completions.create(
            model="gpt-mock",
            messages=[{"role": "user", "content": "stream please"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert chunks[-1].usage.completion_tokens == 4


def test_openai_embedding():
    r = oai().embeddings.create(model="embed-mock", input=["hello world", "bye"])
    assert len(r.data) == 2
    assert len(r.data[0].embedding) == 8
    assert r.usage.prompt_tokens == 3


def test_openai_error_is_typed():
    with pytest.raises(openai.NotFoundError) as e:
        oai().chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("model", ["claude-mock", "gpt-mock"])
def test_anthropic_message(model):
    r = claude().messages.create(
        model=model, max_tokens=5, messages=[{"role": "user", "content": "hello claude"}]
    )
    assert r.model == model
    assert r.content[0].type == "text"
    assert r.usage.output_tokens == 5


@pytest.mark.parametrize("model", ["claude-mock", "gpt-mock"])
def test_anthropic_stream(model):
    with claude().messages.stream(
        model=model, max_tokens=4, messages=[{"role": "user", "content": "stream claude"}]
    ) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert len(text.split()) == 4
    assert final.usage.output_tokens == 4
    assert final.stop_reason == "max_tokens"
