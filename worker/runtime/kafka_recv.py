"""Socket reads of up to 1 MiB for kafka-python 3.0, instead of 4 KiB.

Why: kafka-python 3.0 reads a readable socket with ``recv(4096)`` in a loop until it would block.
Every ``recv`` releases the GIL and takes it back. While the compute thread runs Python code
(pydicom's parse, the pipeline's glue), taking the GIL back waits for that thread's switch
interval (5 ms by default). A 300 KB slice is about 75 such reads, so the consumer's network
thread queued behind compute dozens of times per event.

Measured with ``py-spy record --gil`` on the worker at saturation: the consumer's network thread
held the GIL more than the compute thread, mostly in its receive path. In the same session, with
the same broker and workload, reads of 1 MiB took the worker from 60-77 img/s to 92-99 img/s
(two rounds of two bursts each). Its CPU per event fell from 13.6-16.4 ms to 11.0-11.4 ms. See
the README's benchmark section.

The replacement does what the original does, with bigger reads:

- On a plain TCP socket it also stops at the first short read. The kernel's buffer was empty
  then, and the selector (epoll, level-triggered, registered afresh for every wait) wakes it
  again as soon as more arrives. That saves one more ``recv`` per wake, the one that raises
  ``BlockingIOError``.
- On a TLS socket a read returns at most one TLS record (16 KiB), and decrypted bytes may wait
  inside the SSL object while the socket itself is not readable. So TLS reads go on until
  ``SSLWantReadError``, exactly as kafka-python's own loop does.

It is installed only over the exact code it was written against: :func:`install` compares a
hash of the original method's source. Any other kafka-python keeps its own reads, and
:data:`INSTALLED` is False.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import ssl
from typing import Any, Final

import kafka.errors as kafka_errors

log = logging.getLogger(__name__)

#: Bytes asked for per ``recv``: one whole 300 KB slice, and several at once on loopback.
RECV_BYTES: Final = 1 << 20

# sha256 of ``inspect.getsource`` of kafka-python 3.0.12's ``_sock_recv`` methods.
_KNOWN: Final = {
    "KafkaTCPTransport": "2594a6a62ec5a3e56355033514d33265dcd9513bc5c24342c1b91c90641589ff",
    "KafkaSSLTransport": "0a592f230c5c4455245fa50057926170680e0f950c003a2186b10e578f10a481",
}


# What a non-blocking read raises when nothing more is there (TLS adds its own two).
_TCP_DRAINED: Final = (BlockingIOError, InterruptedError)
_TLS_DRAINED: Final = (*_TCP_DRAINED, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _read_available(
    transport: Any, drained: tuple[type[BaseException], ...], stop_at_short_read: bool
) -> tuple[bytes, Exception | None]:
    """kafka-python's read loop with :data:`RECV_BYTES` reads: everything the socket has now,
    and the error that closes the connection, if any."""
    recvd: list[bytes] = []
    err: Exception | None = None
    while True:
        try:
            data = transport._sock.recv(RECV_BYTES)
        except drained:
            break
        except BaseException as e:  # as kafka-python: any other failure closes the connection
            log.exception("%s: Error receiving network data closing socket", transport)
            err = kafka_errors.KafkaConnectionError(e)
            break
        if not data:
            log.error("%s: socket disconnected", transport)
            err = kafka_errors.KafkaConnectionError("socket disconnected")
            break
        recvd.append(data)
        if stop_at_short_read and len(data) < RECV_BYTES:
            break  # the kernel's buffer is empty: wait for the selector to wake us again
    return b"".join(recvd), err


def _tcp_sock_recv(self: Any) -> tuple[bytes, Exception | None]:
    return _read_available(self, _TCP_DRAINED, stop_at_short_read=True)


def _ssl_sock_recv(self: Any) -> tuple[bytes, Exception | None]:
    # A short read says nothing here: decrypted bytes may still wait in the SSL object.
    return _read_available(self, _TLS_DRAINED, stop_at_short_read=False)


def source_hash(method: Any) -> str:
    """sha256 of a method's source, or "" where it has none."""
    try:
        return hashlib.sha256(inspect.getsource(method).encode()).hexdigest()
    except (OSError, TypeError):
        return ""


def install(module: Any = None) -> bool:
    """Replace both transports' reads in ``module`` (default: kafka-python's
    ``kafka.net.transport``), if both are the code this was written against."""
    if module is None:
        try:
            module = importlib.import_module("kafka.net.transport")
        except ImportError:
            return False
    found = {name: getattr(module, name, None) for name in _KNOWN}
    classes: dict[str, Any] = {name: cls for name, cls in found.items() if cls is not None}
    if len(classes) != len(_KNOWN):
        return False
    if getattr(classes["KafkaTCPTransport"], "_scanstream_recv", False):
        return True
    if any(source_hash(cls._sock_recv) != _KNOWN[name] for name, cls in classes.items()):
        return False
    for name, replacement in (
        ("KafkaTCPTransport", _tcp_sock_recv),
        ("KafkaSSLTransport", _ssl_sock_recv),
    ):
        cls = classes[name]
        cls._scanstream_original_sock_recv = cls._sock_recv
        cls._sock_recv = replacement
        cls._scanstream_recv = True
    return True


INSTALLED: Final = install()
