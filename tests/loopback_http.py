"""A loopback HTTP server for tests: serves one handler class on 127.0.0.1 until the block ends."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def serving(
    handler: type[http.server.BaseHTTPRequestHandler], daemon_threads: bool = False
) -> Iterator[str]:
    """Yield the server's base URL (``http://127.0.0.1:PORT``); shut it down afterwards.

    ``daemon_threads``: do not wait for request threads still running at the end (a handler
    that drips bytes on purpose).
    """
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = daemon_threads
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
