"""The official openai and anthropic Python SDKs against a running ccgate (fake CLI).

Usage: python check_sdks.py BASE_URL SCENARIO_FILE
Each check prints PASS/FAIL; the last line is "N passed, M failed"; exit 1 on any failure.
The fake CLI picks its scenario from a [[scenario:NAME]] token in the prompt; SCENARIO_FILE is
the fake's FAKE_CLAUDE_SCENARIO_FILE, whose first line sets the scenario of every run (requests
and probes alike), which is how these checks "log the CLI out" and back in.
"""
import sys
import urllib.request

import anthropic
import openai

BASE = sys.argv[1].rstrip("/")
SCENARIO_FILE = sys.argv[2]
results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"PASS {name}")
        except Exception as e:  # noqa: BLE001 - report every failure the same way
            results.append((name, e))
            print(f"FAIL {name}: {type(e).__name__}: {e}")
        return fn
    return wrap


def set_cli_scenario(name):
    with open(SCENARIO_FILE, "w") as f:
        f.write(name + "\n")


def probe_now():
    req = urllib.request.Request(
        BASE + "/admin/probe", method="POST", data=b"", headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=30).read()


def log_out():
    # Every run (including the confirming probe a 401 triggers) now fails as "not logged in",
    # so the gate stays closed for as long as the checks below need it.
    set_cli_scenario("not_logged_in")


def log_in():
    # A probe against the fake CLI's default (success) scenario marks health ok again.
    set_cli_scenario("")
    probe_now()


oa = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0)
an = anthropic.Anthropic(base_url=BASE, api_key="unused", max_retries=0)


def expect_raises(exc_type, fn):
    try:
        fn()
    except exc_type:
        return
    except Exception as e:  # noqa: BLE001
        raise AssertionError(f"expected {exc_type.__name__}, got {type(e).__name__}: {e}")
    raise AssertionError(f"expected {exc_type.__name__}, nothing raised")


def oa_chat(text, **kw):
    return oa.chat.completions.create(
        model="sonnet", messages=[{"role": "user", "content": text}], **kw)


def an_stream(text, **kw):
    """Streams with the SDK's helper: (text parts, final message)."""
    with an.messages.stream(model="sonnet", max_tokens=100,
                            messages=[{"role": "user", "content": text}], **kw) as s:
        parts = list(s.text_stream)
        return parts, s.get_final_message()


def an_msg(text, **kw):
    return an.messages.create(
        model="sonnet", max_tokens=100, messages=[{"role": "user", "content": text}], **kw)


@check("openai: chat completion content")
def _():
    r = oa_chat("hi")
    assert r.choices[0].message.content == "Hello from the fake CLI.", r
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens > 0


@check("openai: streaming")
def _():
    parts = [c.choices[0].delta.content or "" for c in oa_chat("hi", stream=True) if c.choices]
    assert "".join(parts) == "Hello from the fake CLI.", parts
    assert len([p for p in parts if p]) >= 2, parts


PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=")


@check("openai: an image part is accepted")
def _():
    r = oa.chat.completions.create(model="sonnet", messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}}]}])
    assert r.choices[0].message.content == "Hello from the fake CLI.", r


@check("openai: a slow stream with keep-alive comments between deltas")
def _():
    # The server runs with sse_keepalive 0.1 s; the slow scenario spaces deltas 0.3 s.
    parts = [c.choices[0].delta.content or "" for c in oa_chat("[[scenario:slow]] hi", stream=True)
             if c.choices]
    assert "".join(parts) == "Hello from the fake CLI.", parts


@check("openai: stop sequences, streaming or not")
def _():
    r = oa_chat("hi", stop=["fake"])
    assert r.choices[0].message.content == "Hello from the ", r
    assert r.choices[0].finish_reason == "stop", r
    parts = [c.choices[0].delta.content or "" for c in oa_chat("hi", stream=True, stop="the fa")
             if c.choices]
    assert "".join(parts) == "Hello from ", parts


@check("openai: RateLimitError")
def _():
    expect_raises(openai.RateLimitError, lambda: oa_chat("[[scenario:rate_limit]]"))


@check("openai: overload is a 503 InternalServerError")
def _():
    expect_raises(openai.InternalServerError, lambda: oa_chat("[[scenario:overloaded]]"))


@check("openai: InternalServerError")
def _():
    expect_raises(openai.InternalServerError, lambda: oa_chat("[[scenario:crash]]"))


def models_list_and_retrieve(client, not_found):
    ids = [m.id for m in client.models.list()]
    assert "sonnet" in ids, ids
    assert client.models.retrieve("sonnet").id == "sonnet"
    expect_raises(not_found, lambda: client.models.retrieve("no-such-model"))


@check("openai: models list and retrieve; NotFoundError for an unknown model")
def _():
    models_list_and_retrieve(oa, openai.NotFoundError)


log_out()


@check("openai: AuthenticationError")
def _():
    expect_raises(openai.AuthenticationError, lambda: oa_chat("hi"))
    # The gate is now closed: the next request fails fast with the same error class.
    expect_raises(openai.AuthenticationError, lambda: oa_chat("hi"))


@check("openai: AuthenticationError while streaming")
def _():
    expect_raises(openai.AuthenticationError, lambda: list(oa_chat("hi", stream=True)))


log_in()


@check("anthropic: message content")
def _():
    r = an_msg("hi")
    assert r.content[0].text == "Hello from the fake CLI.", r
    assert r.stop_reason == "end_turn"


@check("anthropic: streaming")
def _():
    parts, final = an_stream("hi")
    assert "".join(parts) == "Hello from the fake CLI.", parts
    assert len(parts) >= 2, parts
    assert final.content[0].text == "Hello from the fake CLI."


@check("anthropic: models list and retrieve; NotFoundError for an unknown model")
def _():
    models_list_and_retrieve(an, anthropic.NotFoundError)


@check("anthropic: an image block is accepted; a bad one is BadRequestError")
def _():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    r = an.messages.create(model="sonnet", max_tokens=100, messages=[
        {"role": "user", "content": [image, {"type": "text", "text": "What is this?"}]}])
    assert r.content[0].text == "Hello from the fake CLI.", r
    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": PNG_B64}}
    expect_raises(anthropic.BadRequestError, lambda: an.messages.create(
        model="sonnet", max_tokens=100, messages=[{"role": "user", "content": [bad]}]))


@check("anthropic: a slow stream with ping keep-alives between deltas")
def _():
    parts, final = an_stream("[[scenario:slow]] hi")
    assert "".join(parts) == "Hello from the fake CLI.", parts
    assert final.stop_reason == "end_turn", final


@check("anthropic: stop_sequences, streaming or not")
def _():
    r = an_msg("hi", stop_sequences=["fake"])
    assert r.content[0].text == "Hello from the ", r
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "fake", r
    parts, final = an_stream("hi", stop_sequences=["the fa"])
    assert "".join(parts) == "Hello from ", parts
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "the fa", final


@check("anthropic: RateLimitError")
def _():
    expect_raises(anthropic.RateLimitError, lambda: an_msg("[[scenario:rate_limit]]"))


@check("anthropic: OverloadedError (529)")
def _():
    expect_raises(anthropic.OverloadedError, lambda: an_msg("[[scenario:overloaded]]"))


@check("anthropic: InternalServerError")
def _():
    expect_raises(anthropic.InternalServerError, lambda: an_msg("[[scenario:crash]]"))


log_out()


@check("anthropic: AuthenticationError")
def _():
    expect_raises(anthropic.AuthenticationError, lambda: an_msg("hi"))
    expect_raises(anthropic.AuthenticationError, lambda: an_msg("hi"))


@check("anthropic: AuthenticationError while streaming")
def _():
    expect_raises(anthropic.AuthenticationError, lambda: an_stream("hi"))


log_in()


@check("both: served again after re-login")
def _():
    assert oa_chat("hi").choices[0].message.content == "Hello from the fake CLI."
    assert an_msg("hi").content[0].text == "Hello from the fake CLI."


# --- The Responses API and count_tokens ------------------------------------------------


def oa_resp(text, **kw):
    return oa.responses.create(model="sonnet", input=text, **kw)


@check("openai responses: text, usage")
def _():
    r = oa_resp("hi", instructions="be brief", max_output_tokens=100)
    assert r.status == "completed", r
    assert r.output_text == "Hello from the fake CLI.", r
    assert r.output[0].type == "message" and r.output[0].role == "assistant", r
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0, r.usage
    assert r.usage.input_tokens_details.cached_tokens >= 0, r.usage


@check("openai responses: item input with an image")
def _():
    r = oa.responses.create(model="sonnet", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64," + PNG_B64}]}])
    assert r.output_text == "Hello from the fake CLI.", r


@check("openai responses: streaming with the stream helper")
def _():
    with oa.responses.stream(model="sonnet", input="hi") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Hello from the fake CLI.", deltas
    assert len(deltas) >= 2, deltas
    assert final.output_text == "Hello from the fake CLI.", final
    assert final.status == "completed" and final.usage.output_tokens > 0, final


@check("openai responses: stream=True event order and sequence numbers")
def _():
    events = list(oa_resp("hi", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"], types
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"], types
    assert [e.sequence_number for e in events] == list(range(len(events))), events


@check("openai responses: a failure mid-stream ends with error and response.failed")
def _():
    events = list(oa_resp("[[scenario:interrupted]] hi", stream=True))
    types = [e.type for e in events]
    assert "response.output_text.delta" in types, types
    assert types[-2:] == ["error", "response.failed"], types
    assert events[-1].response.status == "failed", events[-1]


@check("openai responses: previous_response_id follow-up; an unknown id is BadRequestError")
def _():
    r1 = oa_resp("first")
    r2 = oa_resp("second", previous_response_id=r1.id)
    assert r2.previous_response_id == r1.id, r2
    assert r2.output_text == "Hello from the fake CLI.", r2
    r3 = oa_resp("third", store=False)
    for missing in ["resp_unknown", r3.id]:
        try:
            oa_resp("more", previous_response_id=missing)
        except openai.BadRequestError as e:
            assert e.code == "previous_response_not_found", e
        else:
            raise AssertionError("an unknown previous_response_id was accepted")


@check("openai responses: function tools are offered; built-in tools are BadRequestError")
def _():
    fn = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
    r = oa_resp("hi", tools=[fn])
    assert r.output_text, r
    # (web_search is served by the CLI's WebSearch: docs/api.md; file search is not.)
    expect_raises(openai.BadRequestError, lambda: oa_resp(
        "hi", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}]))
    bad = {"type": "function", "name": "bad name", "parameters": {"type": "object"}}
    expect_raises(openai.BadRequestError, lambda: oa_resp("hi", tools=[bad]))


@check("anthropic: count_tokens (an estimate, Anthropic's documented example)")
def _():
    r = an.messages.count_tokens(model="sonnet", system="You are a scientist",
                                 messages=[{"role": "user", "content": "Hello, Claude"}])
    assert r.input_tokens == 14, r
    raw = an.messages.with_raw_response.count_tokens(
        model="sonnet", messages=[{"role": "user", "content": "Hello, Claude"}],
        tools=[{"name": "get_weather", "description": "Get the weather",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    assert raw.headers["x-ccgate-token-count"] == "estimate", raw.headers
    assert raw.parse().input_tokens > 346, raw.parse()
    expect_raises(anthropic.BadRequestError, lambda: an.messages.count_tokens(
        model="sonnet", messages=[]))


log_out()


@check("openai responses: AuthenticationError from the gate, streaming or not")
def _():
    expect_raises(openai.AuthenticationError, lambda: oa_resp("hi"))
    expect_raises(openai.AuthenticationError, lambda: list(oa_resp("hi", stream=True)))


@check("anthropic: count_tokens answers while the CLI is logged out")
def _():
    r = an.messages.count_tokens(model="sonnet", messages=[{"role": "user", "content": "hi"}])
    assert r.input_tokens > 0, r


log_in()

# --- end of the Responses API and count_tokens -----------------------------------------


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
