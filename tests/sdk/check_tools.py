"""Client-tool loops with the official openai and anthropic Python SDKs against a running ccgate
whose backend is the REAL claude CLI talking to tests/sdk/mock_messages.py.

Usage: python check_tools.py BASE_URL MOCK_OUTDIR
For each API, single and parallel calls, streaming and not: the model (the mock) calls the
client's tool(s), the client sends its result(s) back, and the checks assert from the mock's
recorded requests that the results reached the model as real tool_result blocks (with the ids
the client saw) and that the round took exactly two upstream calls.
Each check prints PASS/FAIL; the last line is "N passed, M failed"; exit 1 on any failure.
"""
import glob
import json
import os
import sys
import uuid

import anthropic
import openai

BASE = sys.argv[1].rstrip("/")
MOCK_DIR = sys.argv[2]
results = []

oa = openai.OpenAI(base_url=BASE + "/v1", api_key="unused", max_retries=0, timeout=120)
an = anthropic.Anthropic(base_url=BASE, api_key="unused", max_retries=0, timeout=120)

OA_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                      "parameters": {"type": "object", "properties": {"tz": {"type": "string"}},
                                                     "required": ["tz"]}}},
]
AN_TOOLS = [{"name": t["function"]["name"], "description": t["function"]["description"],
             "input_schema": t["function"]["parameters"]} for t in OA_TOOLS]
ANSWERS = {"get_weather": "sunny 21C", "get_time": "noon"}


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


def upstream(nonce):
    """The request bodies the model received for the conversation tagged with nonce."""
    out = []
    for path in sorted(glob.glob(os.path.join(MOCK_DIR, "req-*.json")),
                       key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0])):
        with open(path) as f:
            body = json.load(f)
        if nonce in json.dumps(body.get("messages", [])):
            out.append(body)
    return out


def model_saw_results(nonce, expected):
    """expected: [(tool_use_id, text, is_error)]: the continuation's last user message holds
    exactly these tool_result blocks, and the round took two upstream calls."""
    reqs = upstream(nonce)
    assert len(reqs) == 2, f"one tool round must be 2 upstream calls, got {len(reqs)}"
    users = [m for m in reqs[1]["messages"] if m["role"] == "user"]
    blocks = [b for b in users[-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    got = []
    for b in blocks:
        c = b["content"]
        text = c if isinstance(c, str) else " ".join(x.get("text", "") for x in c if x.get("type") == "text")
        got.append((b["tool_use_id"], text.strip(), bool(b.get("is_error"))))
    assert len(got) == len(expected), f"model saw {got}, expected {expected}"
    for (gid, gtext, gerr), (eid, etext, eerr) in zip(got, expected):
        assert gid == eid and etext in gtext and gerr == eerr, f"model saw {got}, expected {expected}"
    # the assistant turn before carries the same ids as real tool_use blocks
    assistants = [m for m in reqs[1]["messages"] if m["role"] == "assistant"]
    uses = [b["id"] for b in assistants[-1]["content"] if b.get("type") == "tool_use"]
    assert uses == [i for i, _, _ in expected], f"tool_use ids {uses}"


def tag(marker):
    nonce = uuid.uuid4().hex[:12]
    return nonce, f"{marker} ({nonce}) What is the weather and the time in Paris?"


# ---------------------------------------------------------------- OpenAI Chat Completions

def oa_round(parallel, stream):
    nonce, prompt = tag("[[tools:parallel]]" if parallel else "[[tools:single]]")
    messages = [{"role": "user", "content": prompt}]
    kw = {"model": "sonnet", "tools": OA_TOOLS}
    if stream:
        calls, finish = {}, None
        for chunk in oa.chat.completions.create(messages=messages, stream=True, **kw):
            for ch in chunk.choices:
                for tc in ch.delta.tool_calls or []:
                    if tc.index not in calls:
                        assert tc.id and tc.function and tc.function.name, f"first fragment lacks id/name: {tc}"
                        calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                    if tc.function and tc.function.arguments:
                        calls[tc.index]["arguments"] += tc.function.arguments
                finish = ch.finish_reason or finish
        calls = [calls[i] for i in sorted(calls)]
    else:
        r = oa.chat.completions.create(messages=messages, **kw)
        finish = r.choices[0].finish_reason
        calls = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                 for c in r.choices[0].message.tool_calls or []]
    assert finish == "tool_calls", f"finish_reason {finish!r}"
    want = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [c["name"] for c in calls] == want, calls
    for c in calls:
        assert c["id"].startswith("toolu_"), c
        json.loads(c["arguments"])
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}, calls[0]
    messages.append({"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
        for c in calls]})
    for c in calls:
        messages.append({"role": "tool", "tool_call_id": c["id"], "content": ANSWERS[c["name"]]})
    if stream:
        text = "".join(ch.choices[0].delta.content or ""
                       for ch in oa.chat.completions.create(messages=messages, stream=True, **kw) if ch.choices)
    else:
        r = oa.chat.completions.create(messages=messages, **kw)
        assert r.choices[0].finish_reason == "stop", r
        text = r.choices[0].message.content
    assert text.startswith("seen: ") and all(ANSWERS[c["name"]] in text for c in calls), text
    model_saw_results(nonce, [(c["id"], ANSWERS[c["name"]], False) for c in calls])


@check("openai tools: single call, not streaming")
def _():
    oa_round(parallel=False, stream=False)


@check("openai tools: single call, streaming")
def _():
    oa_round(parallel=False, stream=True)


@check("openai tools: parallel calls, not streaming")
def _():
    oa_round(parallel=True, stream=False)


@check("openai tools: parallel calls, streaming")
def _():
    oa_round(parallel=True, stream=True)


# ---------------------------------------------------------------- Anthropic Messages

def an_round(parallel, stream):
    nonce, prompt = tag("[[tools:parallel]]" if parallel else "[[tools:single]]")
    messages = [{"role": "user", "content": prompt}]
    kw = {"model": "sonnet", "max_tokens": 500, "tools": AN_TOOLS}
    if stream:
        kinds = []
        with an.messages.stream(messages=messages, **kw) as s:
            for ev in s:
                if ev.type == "content_block_start":
                    kinds.append(ev.content_block.type)
                elif ev.type == "content_block_delta" and ev.delta.type == "input_json_delta":
                    kinds.append("input_json_delta")
            msg = s.get_final_message()
        assert "tool_use" in kinds and "input_json_delta" in kinds, kinds
    else:
        msg = an.messages.create(messages=messages, **kw)
    assert msg.stop_reason == "tool_use", msg
    uses = [b for b in msg.content if b.type == "tool_use"]
    want = ["get_weather", "get_time"] if parallel else ["get_weather"]
    assert [u.name for u in uses] == want, uses
    assert uses[0].input == {"city": "Paris"}, uses[0]
    assert all(u.id.startswith("toolu_") for u in uses), uses
    messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
    # the second result (parallel) reports a failure, as is_error
    results_ = [{"type": "tool_result", "tool_use_id": u.id, "content": ANSWERS[u.name],
                 **({"is_error": True} if i == 1 else {})} for i, u in enumerate(uses)]
    messages.append({"role": "user", "content": results_})
    if stream:
        with an.messages.stream(messages=messages, **kw) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    else:
        final = an.messages.create(messages=messages, **kw)
        text = final.content[0].text
    assert final.stop_reason == "end_turn", final
    assert text.startswith("seen: ") and all(ANSWERS[u.name] in text for u in uses), text
    if parallel:
        assert "error: noon" in text, text
    model_saw_results(nonce, [(u.id, ANSWERS[u.name], i == 1) for i, u in enumerate(uses)])


@check("anthropic tools: single call, not streaming")
def _():
    an_round(parallel=False, stream=False)


@check("anthropic tools: single call, streaming")
def _():
    an_round(parallel=False, stream=True)


@check("anthropic tools: parallel calls (one is_error), not streaming")
def _():
    an_round(parallel=True, stream=False)


@check("anthropic tools: parallel calls (one is_error), streaming")
def _():
    an_round(parallel=True, stream=True)


# ---------------------------------------------------------------- OpenAI Responses

RESP_TOOLS = [{"type": "function", "name": t["function"]["name"],
               "description": t["function"]["description"],
               "parameters": t["function"]["parameters"]} for t in OA_TOOLS]


def resp_round(stream, previous):
    nonce, prompt = tag("[[tools:single]]")
    kw = {"model": "sonnet", "tools": RESP_TOOLS}
    if stream:
        with oa.responses.stream(input=prompt, **kw) as s:
            kinds = [ev.type for ev in s]
            r = s.get_final_response()
        assert "response.function_call_arguments.delta" in kinds, kinds
    else:
        r = oa.responses.create(input=prompt, **kw)
    calls = [o for o in r.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"], r.output
    assert json.loads(calls[0].arguments) == {"city": "Paris"}, calls[0]
    out = [{"type": "function_call_output", "call_id": c.call_id, "output": ANSWERS[c.name]} for c in calls]
    if previous:
        # The Agents SDK's way: only the outputs, after previous_response_id.
        r2 = oa.responses.create(input=out, previous_response_id=r.id, **kw)
    else:
        items = [{"role": "user", "content": prompt}]
        items += [{"type": "function_call", "call_id": c.call_id, "name": c.name,
                   "arguments": c.arguments} for c in calls]
        r2 = oa.responses.create(input=items + out, **kw)
    assert r2.output_text.startswith("seen: sunny 21C"), r2.output_text
    model_saw_results(nonce, [(c.call_id, ANSWERS[c.name], False) for c in calls])


@check("openai responses tools: function-call round trip, full input")
def _():
    resp_round(stream=False, previous=False)


@check("openai responses tools: streamed call, continued with previous_response_id")
def _():
    resp_round(stream=True, previous=True)


failed = [n for n, e in results if e is not None]
print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
sys.exit(1 if failed else 0)
