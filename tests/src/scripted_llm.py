# The scripted LLM of the e2e suite: an OpenAI-compatible chat-completions server (streaming)
# that answers the first turn with a `run_command` tool call (`sleep 20 && echo slept` when the
# user's message says "slow", else `echo e2e-ok`) and the turn after the tool result with the
# text `e2e-done`. Standard library only (E2E_PYTHON_IMAGE). LLM_PORT: 8080 by default.
import http.server, json, os

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
        msgs = body.get("messages", [])
        user = " ".join(str(m.get("content")) for m in msgs if m.get("role") == "user")
        if msgs and msgs[-1].get("role") == "tool":
            delta, finish = {"role": "assistant", "content": "e2e-done"}, "stop"
        else:
            cmd = "sleep 20 && echo slept" if "slow" in user else "echo e2e-ok"
            call = {"index": 0, "id": "call_1", "type": "function",
                    "function": {"name": "run_command", "arguments": json.dumps({"command": cmd})}}
            delta, finish = {"role": "assistant", "tool_calls": [call]}, "tool_calls"
        chunks = [
            {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
            {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        ]
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for c in chunks:
            self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")

port = int(os.environ.get("LLM_PORT", "8080"))
http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()
