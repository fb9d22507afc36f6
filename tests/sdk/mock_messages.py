"""A loopback mock of the Anthropic Messages API for the SDK tool checks (real CLI behind ccgate).

Usage: python mock_messages.py PORT OUTDIR
Writes each POST /v1/messages body to OUTDIR/req-<n>.json (n from 1, in arrival order) and
answers, streaming (SSE) or not, as the model would:
- the last user message holds tool_result blocks: text "seen: <r1> | <r2>", each result's text
  ("error: " first when is_error, " [image]" per image block);
- else the request offers `StructuredOutput` (--json-schema): a call of it whose input fills the
  schema's properties (as below);
- else a client tool named `…apply_patch` is offered and the messages hold "[[patch]]": a call of
  it adding hello.txt (PATCH);
- else the first user text holds "[[tools:single]]" / "[[tools:parallel]]": one tool_use of the
  first offered client tool (a name starting with "mcp__") / one each of the first two
  (stop_reason tool_use); inputs fill each schema property: city "Paris", tz "CET", else "x";
- else text "Hello from the mock API.".
Anything else gets a 404.
"""
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUT = sys.argv[2]
os.makedirs(OUT, exist_ok=True)
count = [0]
lock = threading.Lock()
SAMPLES = {"city": "Paris", "tz": "CET"}


def user_texts(msg):
    c = msg.get("content")
    if isinstance(c, str):
        return [c]
    return [b.get("text", "") for b in c or [] if isinstance(b, dict) and b.get("type") == "text"]


def last_user(body):
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else {}


def tool_results(body):
    c = last_user(body).get("content")
    return [b for b in c if isinstance(b, dict) and b.get("type") == "tool_result"] if isinstance(c, list) else []


def result_text(r):
    c = r.get("content")
    if isinstance(c, str):
        t = c
    else:
        parts = []
        for b in c or []:
            if b.get("type") == "text":
                parts.append(b.get("text", ""))
            elif b.get("type") == "image":
                parts.append("[image]")
        t = " ".join(p for p in parts if p)
    return ("error: " + t) if r.get("is_error") else t


PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello from ccgate\n*** End Patch\n"


def plan(body):
    """(blocks, stop_reason) for one request."""
    results = tool_results(body)
    if results:
        return [{"type": "text", "text": "seen: " + " | ".join(result_text(r) for r in results)}], "end_turn"
    offered = body.get("tools", [])
    structured = next((t for t in offered if t.get("name") == "StructuredOutput"), None)
    if structured:
        props = (structured.get("input_schema") or {}).get("properties") or {}
        return [{"type": "tool_use", "id": f"toolu_01Mock{count[0]:06d}xSoAbCdEfGh",
                 "name": "StructuredOutput", "input": {k: SAMPLES.get(k, "x") for k in props}}], "tool_use"
    patch_tool = next((t for t in offered if str(t.get("name", "")).endswith("apply_patch")), None)
    if patch_tool and "[[patch]]" in json.dumps(body.get("messages", [])):
        return [{"type": "tool_use", "id": f"toolu_01Mock{count[0]:06d}xPaAbCdEfGh",
                 "name": patch_tool["name"], "input": {"input": PATCH}}], "tool_use"
    first = next((m for m in body.get("messages", []) if m.get("role") == "user"), {})
    text = " ".join(user_texts(first))
    tools = [t for t in body.get("tools", []) if str(t.get("name", "")).startswith("mcp__")]
    # The CLI lists MCP tools sorted by name; the checks' model calls get_weather first.
    tools.sort(key=lambda t: t["name"], reverse=True)
    n = 2 if "[[tools:parallel]]" in text else 1 if "[[tools:single]]" in text else 0
    if n and tools:
        blocks = []
        for i, t in enumerate((tools * 2)[:n]):
            props = (t.get("input_schema") or {}).get("properties") or {}
            blocks.append({"type": "tool_use", "id": f"toolu_01Mock{count[0]:06d}x{i}AbCdEfGh",
                           "name": t["name"], "input": {k: SAMPLES.get(k, "x") for k in props}})
        return blocks, "tool_use"
    return [{"type": "text", "text": "Hello from the mock API."}], "end_turn"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, ctype, data):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", "req_mock")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply(404, "application/json", b'{"type":"error","error":{"type":"not_found_error","message":"mock"}}')

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not self.path.split("?")[0].endswith("/v1/messages"):
            return self.do_GET()
        try:
            b = json.loads(body)
        except ValueError:
            return self.reply(400, "application/json", b'{"type":"error","error":{"type":"invalid_request_error","message":"json"}}')
        with lock:
            count[0] += 1
            k = count[0]
            with open(os.path.join(OUT, f"req-{k}.json"), "w") as f:
                json.dump(b, f)
        blocks, stop = plan(b)
        model = b.get("model", "m")
        usage = {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if not b.get("stream"):
            msg = {"id": f"msg_mock_{k}", "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None,
                   "usage": {**usage, "output_tokens": 5}}
            return self.reply(200, "application/json", json.dumps(msg).encode())
        ev = []

        def f(e, d):
            ev.append(f"event: {e}\ndata: {json.dumps(d)}\n\n")
        f("message_start", {"type": "message_start", "message": {
            "id": f"msg_mock_{k}", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}})
        for i, blk in enumerate(blocks):
            if blk["type"] == "text":
                f("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                f("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": blk["text"]}})
            else:
                f("content_block_start", {"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": blk["id"], "name": blk["name"], "input": {}}})
                s = json.dumps(blk["input"])
                for part in (s[: len(s) // 2], s[len(s) // 2:]):
                    f("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": part}})
            f("content_block_stop", {"type": "content_block_stop", "index": i})
        f("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 5}})
        f("message_stop", {"type": "message_stop"})
        self.reply(200, "text/event-stream", "".join(ev).encode())


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
