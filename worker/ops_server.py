"""``/metrics`` and ``/healthz`` for the processes that have no web app: ``sendq worker`` and ``sendq scheduler``.

Deployments run each process in its own container or pod, so each must answer Prometheus and the orchestrator's
probes itself (a multiprocess directory is per host, and sharing one between containers would mix up pids).
``SENDQ_METRICS_PORT`` turns the server on; it runs in a daemon thread of the supervising process and serves:

- ``GET /metrics``: every process of the group (the samples in ``PROMETHEUS_MULTIPROC_DIR`` when set, else this
  process's registry);
- ``GET /healthz``: 200 while ``health()`` reports every check ``ok``, else 503, with the checks as JSON: the
  process and the dependencies it needs (a dependency down names itself);
- ``GET /livez``: the same for ``live()``, the process's own checks only. A liveness probe belongs here: restarting
  a process cannot bring the database back, and a process waiting out an outage resumes by itself.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from worker.metrics import exposition

log = logging.getLogger(__name__)

Health = Callable[[], dict[str, str]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsServer:
    """Serves ``/metrics`` and ``/healthz`` on ``host:port`` until :meth:`close`."""

    def __init__(self, port: int, *, health: Health, live: Health | None = None,
                 multiprocess_dir: str | None = None, host: str = "0.0.0.0") -> None:
        handler = _handler({"/healthz": health, "/livez": live or health}, multiprocess_dir)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"ops:{self.port}", daemon=True)

    def start(self) -> OpsServer:
        self._thread.start()
        log.info("serving /metrics, /healthz and /livez on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(checks: dict[str, Health], multiprocess_dir: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, exposition(multiprocess_dir), CONTENT_TYPE)
            elif path in checks:
                found = checks[path]()
                status = 200 if all(v == "ok" for v in found.values()) else 503
                self._answer(status, json.dumps(found).encode(), "application/json")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds are not events worth a log line

    return Handler


class MultiprocessDir:
    """The directory a process group's metrics go to.

    A directory named by ``PROMETHEUS_MULTIPROC_DIR`` is created if missing and left as it is (it may be
    shared with other processes of the host; wiping it is the deployment's job, which an emptyDir or tmpfs
    does). Without one, a fresh temporary directory is made, handed to the children through the environment
    (they are spawned, so they import prometheus_client after it is set) and removed on :meth:`close`.
    """

    def __init__(self, configured: str | None) -> None:
        self.owned = configured is None
        self.path = tempfile.mkdtemp(prefix="sendq-metrics-") if configured is None else configured
        os.makedirs(self.path, exist_ok=True)

    def export(self) -> None:
        """Make children started from now on write their samples here (published, like embedded's REDIS_URL)."""
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self.path

    def close(self) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)
