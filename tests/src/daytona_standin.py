# A Daytona stand-in for the cluster e2e suite: the REST endpoints the runner's Daytona client
# uses (runner/src/sandbox/daytona/client.rs), in the documented wire format (JSON shapes,
# asynchronous create and start, `{statusCode, message, error}` errors, 408 on command timeout,
# bearer auth). Standard library only, so that it runs on any python image (E2E_PYTHON_IMAGE).
#
# It is not Daytona: a sandbox is a directory under STANDIN_ROOT, commands run with `sh -c` in
# this container, and there is no isolation. Sandbox paths `/x/y` map to `<root>/<id>/x/y`.
#
# Environment: DAYTONA_API_KEY (required), STANDIN_PORT (8080), STANDIN_ROOT (/tmp/daytona),
# STANDIN_START_DELAY_MS (50).

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_KEY = os.environ.get("DAYTONA_API_KEY", "")
PORT = int(os.environ.get("STANDIN_PORT", "8080"))
ROOT = os.environ.get("STANDIN_ROOT", "/tmp/daytona")
START_DELAY = int(os.environ.get("STANDIN_START_DELAY_MS", "50")) / 1000.0
DEFAULT_TIMEOUT = 60

if not API_KEY:
    sys.exit("daytona stand-in: DAYTONA_API_KEY is required")

sandboxes = {}
lock = threading.Lock()
next_id = [0]


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def sandbox_json(sb, host):
    return {
        "id": sb["id"], "organizationId": "org-standin", "snapshot": sb["snapshot"],
        "user": "daytona", "env": sb["env"], "labels": sb["labels"], "public": False,
        "target": "standin", "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
        "state": sb["state"], "errorReason": None,
        "toolboxProxyUrl": "http://%s/toolbox" % host,
    }


def settle_later(sid):
    def settle():
        time.sleep(START_DELAY)
        with lock:
            if sid in sandboxes:
                sandboxes[sid]["state"] = "started"
    threading.Thread(target=settle, daemon=True).start()


def started_root(sid):
    with lock:
        sb = sandboxes.get(sid)
        if sb is None:
            raise ApiError(404, "Sandbox with ID or name %s not found" % sid)
        if sb["state"] != "started":
            raise ApiError(400, "Sandbox %s is not started (state %s)" % (sid, sb["state"]))
        return sb["root"]


def host_path(root, raw):
    if raw is None:
        raise ApiError(400, "path is required")
    if not raw.startswith("/"):
        raise ApiError(400, "path must be absolute")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ApiError(400, "path must not contain '..'")
    return os.path.join(root, *parts)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("daytona stand-in: %s\n" % (fmt % args))

    def reply(self, status, body=None, raw=None, ctype="application/json"):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, message):
        reason = self.responses.get(status, ("Error",))[0]
        self.reply(status, {"statusCode": status, "message": message, "error": reason})

    def body(self):
        length = int(self.headers.get("content-length") or "0")
        return self.rfile.read(length) if length else b""

    def route(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        parts = [urllib.parse.unquote(p) for p in url.path.split("/") if p]
        body = self.body()
        if parts == ["healthz"]:
            return self.reply(200, {"ok": True})
        if self.headers.get("authorization") != "Bearer " + API_KEY:
            raise ApiError(401, "Invalid credentials")
        if parts[:2] == ["api", "sandbox"]:
            return self.api(method, parts[2:], query, body)
        if parts[:1] == ["toolbox"] and len(parts) >= 3:
            return self.toolbox(method, parts[1], parts[2:], query, body)
        raise ApiError(404, "no such endpoint")

    def api(self, method, rest, query, body):
        host = self.headers.get("host", "localhost:%d" % PORT)
        if not rest and method == "POST":
            spec = json.loads(body or b"{}")
            with lock:
                next_id[0] += 1
                sid = "sbx-%d" % next_id[0]
                root = os.path.join(ROOT, sid)
                os.makedirs(root, exist_ok=True)
                sb = {"id": sid, "state": "creating", "labels": spec.get("labels") or {},
                      "env": spec.get("env") or {}, "snapshot": spec.get("snapshot"),
                      "root": root}
                sandboxes[sid] = sb
                out = sandbox_json(sb, host)
            settle_later(sid)
            return self.reply(200, out)
        if not rest and method == "GET":
            wanted = json.loads(query.get("labels") or "{}")
            with lock:
                items = [sandbox_json(sb, host) for sb in sandboxes.values()
                         if all(sb["labels"].get(k) == v for k, v in wanted.items())]
            return self.reply(200, {"items": items, "nextCursor": None})
        sid = rest[0]
        with lock:
            sb = sandboxes.get(sid)
            if sb is None:
                raise ApiError(404, "Sandbox with ID or name %s not found" % sid)
            if len(rest) == 1 and method == "GET":
                return self.reply(200, sandbox_json(sb, host))
            if len(rest) == 1 and method == "DELETE":
                del sandboxes[sid]
                shutil.rmtree(sb["root"], ignore_errors=True)
                return self.reply(200)
            if rest[1:] == ["start"] and method == "POST":
                if sb["state"] != "started":
                    sb["state"] = "starting"
                    settle_later(sid)
                return self.reply(200, sandbox_json(sb, host))
            if rest[1:] == ["stop"] and method == "POST":
                sb["state"] = "stopped"
                return self.reply(200, sandbox_json(sb, host))
        raise ApiError(404, "no such endpoint")

    def toolbox(self, method, sid, rest, query, body):
        root = started_root(sid)
        if rest == ["process", "execute"] and method == "POST":
            return self.execute(root, json.loads(body or b"{}"))
        path = host_path(root, query.get("path"))
        if rest == ["files"] and method == "GET":
            listed = []
            for name in sorted(os.listdir(path)):
                st = os.stat(os.path.join(path, name))
                is_dir = os.path.isdir(os.path.join(path, name))
                listed.append({"name": name, "isDir": is_dir, "size": st.st_size,
                               "modTime": "2025-01-01T00:00:00Z",
                               "mode": "drwxr-xr-x" if is_dir else "-rw-r--r--"})
            return self.reply(200, listed)
        if rest == ["files"] and method == "DELETE":
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
            return self.reply(200)
        if rest == ["files", "download"] and method == "GET":
            with open(path, "rb") as f:
                return self.reply(200, raw=f.read(), ctype="application/octet-stream")
        if rest == ["files", "upload"] and method == "POST":
            ctype = self.headers.get("content-type", "")
            message = BytesParser(policy=HTTP).parsebytes(
                b"content-type: " + ctype.encode() + b"\r\n\r\n" + body)
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition") == "file":
                    # Like the real toolbox, the parent must exist; the client creates it.
                    with open(path, "wb") as f:
                        f.write(part.get_payload(decode=True) or b"")
                    return self.reply(200)
            raise ApiError(400, "multipart field 'file' is missing")
        if rest == ["files", "folder"] and method == "POST":
            os.makedirs(path, exist_ok=True)
            return self.reply(201)
        raise ApiError(404, "no such endpoint")

    def execute(self, root, spec):
        cwd = host_path(root, spec.get("cwd") or "/")
        timeout = spec.get("timeout") or DEFAULT_TIMEOUT
        env = dict(os.environ)
        env.pop("DAYTONA_API_KEY", None)
        env.update(spec.get("envs") or {})
        # Merges stderr into stdout in write order, as Daytona's `result` does.
        child = subprocess.Popen(["/bin/sh", "-c", "exec 2>&1\n" + spec.get("command", "")],
                                 cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE, start_new_session=True)
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            raise ApiError(408, "Command execution timeout")
        return self.reply(200, {"exitCode": child.returncode,
                                "result": out.decode("utf-8", "replace")})

    def handle_any(self, method):
        try:
            self.route(method)
        except ApiError as e:
            self.error(e.status, e.message)
        except FileNotFoundError as e:
            self.error(404, str(e))
        except (OSError, ValueError) as e:
            self.error(400, str(e))

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")


os.makedirs(ROOT, exist_ok=True)
print("daytona stand-in listening on :%d" % PORT, flush=True)
ThreadingHTTPServer(("", PORT), Handler).serve_forever()
