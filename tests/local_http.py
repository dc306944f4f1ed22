"""A threaded HTTP(S) server on loopback and a self-signed certificate for it:
the stores the direct (kernel-socket) transfer tests talk to."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler],
          tls: ssl.SSLContext | None = None) -> Iterator[http.server.ThreadingHTTPServer]:
    """``handler`` answering on 127.0.0.1 (a free port), over TLS when ``tls`` is given."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def self_signed(where: Path) -> tuple[Path, ssl.SSLContext]:
    """A certificate for 127.0.0.1 written under ``where`` (its PEM) and a server context that presents it."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(where / "key.pem"),
                    "-out", str(where / "cert.pem")], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(where / "cert.pem", where / "key.pem")
    return where / "cert.pem", context
