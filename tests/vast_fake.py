"""A stand-in for the Vast.ai API on 127.0.0.1, for eas's tests (unit and integration).

It answers the calls the ``vastai`` SDK makes (paths under ``/api/v0``), checks
``Authorization: Bearer KEY`` (401 otherwise) and logs every request. An "instance"
is whatever ``on_create(instance_id) -> (host, port)`` starts (in eas's tests, a real
sshd in its own namespaces); ``on_destroy(instance_id)`` ends it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def offer(offer_id: int, gpu_name: str = "RTX 4090", num_gpus: int = 1, dph_total: float = 0.4,
          min_bid: float = 0.2, disk_space: float = 100.0) -> dict:
    return {"id": offer_id, "ask_contract_id": offer_id, "gpu_name": gpu_name, "num_gpus": num_gpus,
            "dph_total": dph_total, "min_bid": min_bid, "disk_space": disk_space, "gpu_ram": 24564,
            "reliability2": 0.99, "rentable": True, "verified": True}


_OPS = {"eq": lambda a, b: str(a) == str(b), "lte": lambda a, b: float(a) <= float(b),
        "gte": lambda a, b: float(a) >= float(b), "lt": lambda a, b: float(a) < float(b),
        "gt": lambda a, b: float(a) > float(b)}


@dataclass
class FakeVast:
    key: str = "test-key"
    offers: list[dict] = field(default_factory=lambda: [offer(101), offer(102, dph_total=0.9),
                                                        offer(103, gpu_name="RTX 3090", dph_total=0.2)])
    on_create: Callable[[int], tuple[str, int]] | None = None
    on_destroy: Callable[[int], None] | None = None
    # the state an instance reports; "never" keeps it "loading"; a callable (id, n_shows) -> state
    # or (state, status_msg), asked again while it answers "loading"
    start_state: str | Callable[[int, int], str | tuple[str, str]] = "running"
    # status codes answered, one per request, before any request is routed (a busy API: 503, 429)
    errors: list[int] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    instances: dict[int, dict] = field(default_factory=dict)
    shows: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._next = 9000

    # -- the HTTP side ------------------------------------------------------
    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                req = {"method": self.command, "path": self.path, "body": body,
                       "auth": self.headers.get("Authorization")}
                with fake._lock:
                    fake.requests.append(req)
                with fake._lock:
                    code = fake.errors.pop(0) if fake.errors else None
                if code is not None:
                    return self._send(code, {"success": False, "error": "busy"})
                if req["auth"] != f"Bearer {fake.key}":
                    return self._send(401, {"success": False, "error": "invalid_api_key"})
                code, out = fake.route(self.command, self.path.split("?")[0], body)
                self._send(code, out)

            def _send(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- the API -----------------------------------------------------------
    def _matches(self, o: dict, q: dict) -> bool:
        for k, cond in q.items():
            if not isinstance(cond, dict) or k not in o:
                continue
            for op, v in cond.items():
                if op in _OPS and not _OPS[op](o[k], v):
                    return False
        return True

    def route(self, method: str, path: str, body) -> tuple[int, dict]:
        m = re.fullmatch(r"/api/v0/(\w+)/(?:(\d+)/)?", path)
        if not m:
            return 404, {"error": f"no route {method} {path}"}
        what, ident = m[1], int(m[2]) if m[2] else None
        if method == "POST" and what == "bundles":
            q = body or {}
            offers = sorted((o for o in self.offers if self._matches(o, q)), key=lambda o: o["dph_total"])
            return 200, {"offers": offers}
        if method == "PUT" and what == "asks":
            with self._lock:
                self._next += 1
                iid = self._next
            host, port = self.on_create(iid) if self.on_create else ("127.0.0.1", 1)
            self.instances[iid] = {"id": iid, "label": (body or {}).get("label"), "actual_status": "loading",
                                   "intended_status": "running", "ssh_host": host, "ssh_port": port,
                                   "public_ipaddr": host, "ports": {}, "start_date": time.time(),
                                   "extra_env": [], "offer_id": ident, "status_msg": None}
            return 200, {"success": True, "new_contract": iid}
        if what == "instances" and ident is not None:
            row = self.instances.get(ident)
            if method == "DELETE":
                if row is not None and row["actual_status"] != "destroyed":
                    row["actual_status"] = "destroyed"
                    if self.on_destroy:
                        self.on_destroy(ident)
                return 200, {"success": True}
            if method == "PUT" and row is not None:  # start/stop
                row["actual_status"] = "stopped" if (body or {}).get("state") == "stopped" else "running"
                return 200, {"success": True}
            if method == "GET":
                if row is None:
                    return 200, {"instances": None}
                self.shows[ident] = self.shows.get(ident, 0) + 1
                if row["actual_status"] == "loading":
                    st = self.start_state
                    st = st(ident, self.shows[ident]) if callable(st) else st
                    if isinstance(st, tuple):  # (state, status_msg): why an instance will not run
                        st, row["status_msg"] = st
                    if st != "never":
                        row["actual_status"] = st
                return 200, {"instances": dict(row)}
        return 404, {"error": f"no route {method} {path}"}

    # -- what the tests look at ---------------------------------------------
    def calls(self, method: str, prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(prefix)]

    def live(self) -> list[int]:
        return [i for i, r in self.instances.items() if r["actual_status"] != "destroyed"]
