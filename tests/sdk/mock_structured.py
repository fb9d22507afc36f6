"""A loopback Messages API mock for the structured-output SDK checks (stdlib only).

Usage: mock_structured.py PORT_FILE. When the request offers the `StructuredOutput` tool
(the CLI's `--json-schema`) and no tool result came back yet, the answer is a call of it
whose input is PERSON (as `input_json_delta` fragments when streaming); otherwise text.
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PERSON = {"name": "Ada", "age": 36}


def blocks_for(body):
    tools = [t.get("name") for t in body.get("tools", [])]
    last = body.get("messages", [{}])[-1].get("content")
    answered = isinstance(last, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last)
    if "StructuredOutput" in tools and not answered:
        return [{"type": "tool_use", "id": "toolu_sdk_1", "name": "StructuredOutput",
                 "input": PERSON}], "tool_use"
    return [{"type": "text", "text": "Here is a person: Ada, 36."}], "end_turn"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, ctype, data):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if not self.path.split("?")[0].endswith("/v1/messages"):
            return self.reply(404, "application/json", b'{"type":"error","error":{"type":"not_found_error","message":"no route"}}')
        blocks, stop = blocks_for(body)
        usage = {"input_tokens": 12, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 9}
        msg = {"id": "msg_sdk", "type": "message", "role": "assistant", "model": body.get("model", "m"),
               "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return self.reply(200, "application/json", json.dumps(msg).encode())
        out = []

        def ev(name, data):
            out.append(f"event: {name}\ndata: {json.dumps(data)}\n\n")
        ev("message_start", {"type": "message_start", "message": dict(msg, content=[], stop_reason=None)})
        for i, b in enumerate(blocks):
            if b["type"] == "tool_use":
                ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": dict(b, input={})})
                text = json.dumps(b["input"])
                for part in (text[: len(text) // 2], text[len(text) // 2:]):
                    ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                               "delta": {"type": "input_json_delta", "partial_json": part}})
            else:
                ev("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})
                ev("content_block_delta", {"type": "content_block_delta", "index": i,
                                           "delta": {"type": "text_delta", "text": b["text"]}})
            ev("content_block_stop", {"type": "content_block_stop", "index": i})
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": 9}})
        ev("message_stop", {"type": "message_stop"})
        self.reply(200, "text/event-stream", "".join(out).encode())


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
