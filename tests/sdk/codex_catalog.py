"""Writes a Codex CLI model catalog (`model_catalog_json`) with one entry for MODEL, so that
Codex offers its `apply_patch` tool (a freeform `custom` tool) for a model it does not know.

Usage: codex_catalog.py MODEL OUT.json CODEX [ARGS...]
Runs `CODEX ARGS... exec --skip-git-repo-check hi` once against a loopback capture server
(the provider's base_url overridden with -c) to read the instructions Codex itself sends for
an unknown model (its first developer message), and uses them as the entry's
`base_instructions`, so the catalog changes nothing but the tool: `apply_patch_tool_type:
"freeform"`. The other fields are the ones Codex 0.171's parser requires, with neutral
values. Stdlib only.
"""
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

model, out, codex = sys.argv[1], sys.argv[2], sys.argv[3:]
bodies = []


class Capture(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
        data = b'{"error":{"message":"capture only","type":"invalid_request_error"}}'
        self.send_response(400)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Capture)
threading.Thread(target=server.serve_forever, daemon=True).start()
base = f"http://127.0.0.1:{server.server_address[1]}/v1"
subprocess.run(codex + ["-c", f'model_providers.ccgate.base_url="{base}"',
                        "exec", "--skip-git-repo-check", "hi"],
               capture_output=True, timeout=120, check=False)
server.shutdown()
if not bodies:
    sys.exit("codex_catalog: Codex sent no request")
first = json.loads(bodies[0])
developer = [i for i in first.get("input", []) if i.get("role") == "developer"]
if not developer:
    sys.exit("codex_catalog: no developer message in Codex's request")
instructions = "".join(p.get("text", "") for p in developer[0].get("content", []))
entry = {
    "slug": model,
    "display_name": model,
    "base_instructions": instructions,
    "apply_patch_tool_type": "freeform",
    "supported_reasoning_levels": [],
    "shell_type": "default",
    "visibility": "list",
    "supported_in_api": True,
    "priority": 0,
    "support_verbosity": False,
    "truncation_policy": {"mode": "tokens", "limit": 10000},
    "experimental_supported_tools": [],
}
with open(out, "w") as f:
    json.dump({"models": [entry]}, f, indent=1)
print(f"codex_catalog: {out} ({len(instructions)} characters of Codex's own instructions)")
