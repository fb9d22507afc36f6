#!/usr/bin/env python3
"""bench/memory.py: peak RSS and /health latency under the heaviest allowed bodies (issue 27).

Starts ccgate (CCGATE_BIN, default $CARGO_TARGET_DIR/release/ccgate) on 127.0.0.1:0 with the
fake CLI (cli.max_concurrent 4, queue 32), then measures, each case on a fresh process:

  arrays-tools    8 concurrent Chat Completions requests, each with 16 tools whose schemas
                  hold ~60 KB of [0,0,...] each (an `enum`; ~1 MiB per request)
  arrays-history  8 concurrent Messages requests, each with an earlier tool_use whose
                  input holds ~1 MiB of [0,0,...] (presented as a session file)
  arrays-at-budget  8 concurrent Responses requests whose input item's content holds
                  10,900 parts (32,701 values), just under the request's budget of tree
                  values: what ccgate reads of an item is a tree (accepted)
  parts-chat      8 concurrent Chat Completions requests whose one user message holds
                  ~1 MiB of tiny text parts ({"type":"text","text":"x"}, ~37,000)
  parts-messages  the same on Messages
  parts-chat-at-budget, parts-messages-at-budget  the same with 10,922 parts (32,766
                  values, just under the request's budget: accepted)
  arrays-items    8 concurrent Responses requests, each with ~1 MiB of [0,0,...] beside an
                  input item's fields (not read by ccgate: skipped as it is parsed, served)
  count-tokens    8 concurrent count_tokens requests with the same history
  turns-30k       /health latency (max of 20 GETs every 50 ms) while two requests of
                  30,000 short turns (~1 MiB each) are presented

Prints the peak RSS rise (VmHWM after - VmRSS before) per case and the /health maximum.
Targets (issue 27): rise < 100 MB for 8 array-heavy requests; /health < 0.5 s.
"""
import concurrent.futures as cf
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("CCGATE_BIN", os.path.join(TARGET, "release", "ccgate"))
MIB = 1 << 20


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def start(tmp):
    log = open(os.path.join(tmp, "ccgate.log"), "w+")
    env = {k: v for k, v in os.environ.items() if k != "CCGATE_BIN"}
    env.update({
        "CCGATE_CLI__COMMAND": os.path.join(ROOT, "tests", "fake-claude"),
        "CCGATE_LISTEN": "127.0.0.1:0",
        "CCGATE_RULES": os.path.join(ROOT, "rules", "rules.yaml"),
        "CCGATE_CLI__MAX_CONCURRENT": "4",
        "CCGATE_CLI__QUEUE_SIZE": "32",
        "CCGATE_REQUEST_BODY_LIMIT": str(4 * MIB),
        "CCGATE_LOG_LEVEL": "info",
        "CLAUDE_CONFIG_DIR": os.path.join(tmp, "claude"),
    })
    p = subprocess.Popen([BIN, "serve"], cwd=tmp, env=env, stderr=log, stdout=log)
    for _ in range(200):
        time.sleep(0.05)
        log.seek(0)
        m = re.search(r"listen=(127\.0\.0\.1:\d+)", log.read())
        if m:
            return p, "http://" + m.group(1)
    p.kill()
    sys.exit("ccgate did not start: " + open(log.name).read()[-2000:])


def post(base, path, body, timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def zeros(nbytes):
    return "[" + ",".join(["0"] * (nbytes // 2)) + "]"


def arrays_tools():
    # 16 tools of ~60 KB each (a tool definition may have 64 KiB; all together 1 MiB).
    schema = '{"type":"object","properties":{"x":{"enum":%s}}}' % zeros(60000)
    tools = ",".join('{"type":"function","function":{"name":"t%d","parameters":%s}}' % (i, schema)
                     for i in range(16))
    body = ('{"model":"sonnet","messages":[{"role":"user","content":"hi"}],'
            '"tools":[%s]}' % tools)
    return "/v1/chat/completions", body.encode()


def arrays_history(path="/v1/messages"):
    body = ('{"model":"sonnet","max_tokens":10,"messages":['
            '{"role":"user","content":"hi"},'
            '{"role":"assistant","content":[{"type":"tool_use","id":"toolu_1","name":"t","input":{"x":%s}}]},'
            '{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":"ok"}]}]}'
            % zeros(MIB))
    return path, body.encode()


def arrays_at_budget():
    # What is still a tree: the content parts ccgate reads of a Responses input item, just
    # under the request's budget of tree values (http::bounded::MAX_TREE_VALUES): the item
    # 1, its type and role 2, content 1, each part 3.
    parts = ",".join(['{"type":"input_text","text":"a"}'] * 10900)
    body = ('{"model":"sonnet","store":false,"input":['
            '{"type":"message","role":"user","content":[%s]}]}' % parts)
    return "/v1/responses", body.encode()


def tiny_parts(path, n=None):
    # ~1 MiB of the smallest content parts in one user message (Chat Completions, Messages),
    # or n of them (10,922: 32,766 values, just under the request's budget; a part costs 3).
    part = '{"type":"text","text":"x"}'
    parts = ",".join([part] * (n or MIB // (len(part) + 1)))
    body = '{"model":"sonnet","max_tokens":10,"messages":[{"role":"user","content":[%s]}]}' % parts
    return path, body.encode()


def arrays_items():
    # ~1 MiB of [0,0,...] beside a Responses input item's fields (not read: skipped, served).
    body = ('{"model":"sonnet","store":false,"input":['
            '{"type":"message","role":"user","content":"hi","x":%s}]}' % zeros(MIB))
    return "/v1/responses", body.encode()


def turns_30k():
    msgs = []
    for i in range(30000):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": "t%d" % i})
    msgs.append({"role": "user", "content": "last"})
    return "/v1/messages", json.dumps({"model": "sonnet", "max_tokens": 10, "messages": msgs}).encode()


def peak_case(name, path_body, n=8):
    with tempfile.TemporaryDirectory() as tmp:
        p, base = start(tmp)
        try:
            # Warm up: one small request, so the rise is the bodies' cost.
            post(base, "/v1/messages", {"model": "sonnet", "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "hi"}]})
            time.sleep(0.3)
            before = status(p.pid, "VmRSS")
            path, body = path_body
            t0 = time.time()
            with cf.ThreadPoolExecutor(n) as ex:
                codes = list(ex.map(lambda _: post(base, path, body), range(n)))
            took = time.time() - t0
            peak = status(p.pid, "VmHWM")
            print(f"{name:16s} statuses {sorted(set(codes))}  rss before {before / MIB:7.1f} MiB  "
                  f"peak rise {(peak - before) / MIB:7.1f} MiB  ({took:.1f} s)")
            return peak - before
        finally:
            p.terminate()
            p.wait(10)


def health_case():
    with tempfile.TemporaryDirectory() as tmp:
        p, base = start(tmp)
        try:
            path, body = turns_30k()
            lat = []
            with cf.ThreadPoolExecutor(4) as ex:
                futs = [ex.submit(post, base, path, body) for _ in range(2)]
                for _ in range(40):
                    t0 = time.time()
                    urllib.request.urlopen(base + "/health", timeout=30).read()
                    lat.append(time.time() - t0)
                    if all(f.done() for f in futs):
                        break
                    time.sleep(0.05)
                codes = [f.result() for f in futs]
            print(f"{'turns-30k':16s} statuses {sorted(set(codes))}  /health max {max(lat) * 1000:.0f} ms "
                  f"over {len(lat)} GETs")
        finally:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    print(f"binary: {BIN}")
    cases = sys.argv[1:] or ["arrays-tools", "arrays-history", "arrays-items", "arrays-at-budget",
                             "parts-chat", "parts-messages", "parts-chat-at-budget",
                             "parts-messages-at-budget", "count-tokens", "turns-30k"]
    for c in cases:
        if c == "arrays-tools":
            peak_case(c, arrays_tools())
        elif c == "arrays-history":
            peak_case(c, arrays_history())
        elif c == "arrays-items":
            peak_case(c, arrays_items())
        elif c == "arrays-at-budget":
            peak_case(c, arrays_at_budget())
        elif c == "parts-chat":
            peak_case(c, tiny_parts("/v1/chat/completions"))
        elif c == "parts-messages":
            peak_case(c, tiny_parts("/v1/messages"))
        elif c == "parts-chat-at-budget":
            peak_case(c, tiny_parts("/v1/chat/completions", 10922))
        elif c == "parts-messages-at-budget":
            peak_case(c, tiny_parts("/v1/messages", 10922))
        elif c == "count-tokens":
            peak_case(c, arrays_history("/v1/messages/count_tokens"))
        elif c == "turns-30k":
            health_case()
