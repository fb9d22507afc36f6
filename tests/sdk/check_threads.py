"""The Anthropic SDK's Threads beta and tool runner on their defaults, against a running ccgate
whose backend is the REAL claude CLI talking to tests/sdk/mock_messages.py.

Usage: python check_threads.py BASE_URL MOCK_OUTDIR
- `client.beta.messages.thread(...).send()` twice: the second upstream request carries the first
  turn (the model knows it), though the SDK sent only the new turn;
- `client.beta.messages.tool_runner(...)` with a @beta_tool on its defaults (threads on): the
  tool runs and the final answer reports the tool's result.
Each check prints PASS/FAIL; the last line is "N passed, M failed"; exit 1 on any failure.
"""
import glob
import json
import os
import sys

import anthropic
from anthropic import beta_tool

BASE = sys.argv[1].rstrip("/")
MOCK_DIR = sys.argv[2]
results = []
an = anthropic.Anthropic(base_url=BASE, api_key="unused", max_retries=0, timeout=120)


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


def last_request():
    files = glob.glob(os.path.join(MOCK_DIR, "req-*.json"))
    newest = max(files, key=lambda f: int(f.rsplit("-", 1)[1].split(".")[0]))
    with open(newest) as f:
        return json.load(f)


@check("thread().send() twice: the second turn knows the first")
def _thread_send_twice():
    thread = an.beta.messages.thread(model="sonnet", max_tokens=256, system="Remember codes.")
    first = thread.send({"role": "user", "content": "The code is 4711."})
    assert first.content[0].text, first
    second = thread.send({"role": "user", "content": "What was the code?"})
    assert second.content[0].text, second
    sent = json.dumps(last_request()["messages"])
    assert "The code is 4711." in sent, sent
    assert "What was the code?" in sent, sent
    assert first.content[0].text in sent, sent


@beta_tool
def get_weather(city: str) -> str:
    """Weather for a city.

    Args:
        city: the city
    """
    return f"sunny in {city}"


@check("tool_runner on its defaults: the tool runs, the answer sees its result")
def _tool_runner():
    runner = an.beta.messages.tool_runner(
        model="sonnet", max_tokens=256, tools=[get_weather],
        messages=[{"role": "user", "content": "[[tools:single]] weather?"}])
    final = runner.until_done()
    text = "".join(b.text for b in final.content if b.type == "text")
    assert text.startswith("seen: sunny in Paris"), final


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
