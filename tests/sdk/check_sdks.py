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


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
