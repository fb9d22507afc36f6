"""The official openai and anthropic Python SDKs against a running ccgate (fake CLI).

Usage: python check_sdks.py BASE_URL
Each check prints PASS/FAIL; the last line is "N passed, M failed"; exit 1 on any failure.
The fake CLI picks its scenario from a [[scenario:NAME]] token in the prompt.
"""
import sys
import urllib.request

import anthropic
import openai

BASE = sys.argv[1].rstrip("/")
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


def reopen_gate():
    # A probe against the fake CLI's default (success) scenario marks health ok again.
    req = urllib.request.Request(BASE + "/admin/probe", method="POST", data=b"")
    urllib.request.urlopen(req, timeout=30).read()


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


@check("openai: RateLimitError")
def _():
    expect_raises(openai.RateLimitError, lambda: oa_chat("[[scenario:rate_limit]]"))


@check("openai: overload is a 503 InternalServerError")
def _():
    expect_raises(openai.InternalServerError, lambda: oa_chat("[[scenario:overloaded]]"))


@check("openai: InternalServerError")
def _():
    expect_raises(openai.InternalServerError, lambda: oa_chat("[[scenario:crash]]"))


@check("openai: AuthenticationError")
def _():
    expect_raises(openai.AuthenticationError, lambda: oa_chat("[[scenario:not_logged_in]]"))
    # The gate is now closed: the next request fails fast with the same error class.
    expect_raises(openai.AuthenticationError, lambda: oa_chat("hi"))


@check("openai: AuthenticationError while streaming")
def _():
    expect_raises(openai.AuthenticationError, lambda: list(oa_chat("hi", stream=True)))


reopen_gate()


@check("anthropic: message content")
def _():
    r = an_msg("hi")
    assert r.content[0].text == "Hello from the fake CLI.", r
    assert r.stop_reason == "end_turn"


@check("anthropic: streaming")
def _():
    with an.messages.stream(model="sonnet", max_tokens=100,
                            messages=[{"role": "user", "content": "hi"}]) as s:
        parts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(parts) == "Hello from the fake CLI.", parts
    assert len(parts) >= 2, parts
    assert final.content[0].text == "Hello from the fake CLI."


@check("anthropic: RateLimitError")
def _():
    expect_raises(anthropic.RateLimitError, lambda: an_msg("[[scenario:rate_limit]]"))


@check("anthropic: OverloadedError (529)")
def _():
    expect_raises(anthropic.OverloadedError, lambda: an_msg("[[scenario:overloaded]]"))


@check("anthropic: InternalServerError")
def _():
    expect_raises(anthropic.InternalServerError, lambda: an_msg("[[scenario:crash]]"))


@check("anthropic: AuthenticationError")
def _():
    expect_raises(anthropic.AuthenticationError, lambda: an_msg("[[scenario:not_logged_in]]"))
    expect_raises(anthropic.AuthenticationError, lambda: an_msg("hi"))


reopen_gate()

failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
