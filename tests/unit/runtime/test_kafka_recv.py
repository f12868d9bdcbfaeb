"""kafka-python's socket reads, 1 MiB at a time (worker/runtime/kafka_recv.py)."""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import types
from collections.abc import Iterator
from typing import Any

import kafka.errors as kafka_errors
import pytest

from worker.runtime import kafka_recv


class _Transport:
    def __init__(self, sock: Any) -> None:
        self._sock = sock


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    b.setblocking(False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _read_all(recv: Any, transport: Any, size: int) -> tuple[bytes, int]:
    """Call ``recv`` (as the selector would, when readable) until ``size`` bytes came."""
    got, calls = b"", 0
    while len(got) < size:
        select.select([transport._sock], [], [], 5.0)
        data, err = recv(transport)
        assert err is None
        got += data
        calls += 1
    return got, calls


def test_tcp_reads_everything_sent_in_order(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    payload = os.urandom(3 * kafka_recv.RECV_BYTES + 12345)
    writer = threading.Thread(target=a.sendall, args=(payload,))
    writer.start()
    got, _ = _read_all(kafka_recv._tcp_sock_recv, _Transport(b), len(payload))
    writer.join()
    assert got == payload


def test_tcp_takes_a_whole_buffered_record_in_one_call(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    payload = os.urandom(100_000)  # kafka-python's own loop would read this 25 times
    a.sendall(payload)
    data, err = kafka_recv._tcp_sock_recv(_Transport(b))
    assert err is None and data == payload


def test_tcp_with_nothing_to_read_returns_empty_without_error(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, b = pair
    assert kafka_recv._tcp_sock_recv(_Transport(b)) == (b"", None)


def test_tcp_peer_gone_is_a_connection_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendall(b"last words")
    a.close()
    data, err = kafka_recv._tcp_sock_recv(_Transport(b))
    if data == b"last words" and err is None:  # the close came in a second read
        data, err = kafka_recv._tcp_sock_recv(_Transport(b))
    assert isinstance(err, kafka_errors.KafkaConnectionError)


class _TlsSock:
    """A TLS socket as ssl hands it over: short reads (one TLS record each), then
    SSLWantReadError once its decrypted buffer is empty."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.asked: list[int] = []

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        if not self.chunks:
            raise ssl.SSLWantReadError()
        return self.chunks.pop(0)


def test_tls_does_not_stop_at_a_short_read() -> None:
    """Decrypted bytes may wait in the SSL object while the socket is not readable: stopping
    at the first short read would leave them there until more bytes arrived."""
    sock = _TlsSock([b"a" * 16384, b"b" * 16384, b"c" * 10])
    data, err = kafka_recv._ssl_sock_recv(_Transport(sock))
    assert err is None
    assert data == b"a" * 16384 + b"b" * 16384 + b"c" * 10
    assert sock.asked == [kafka_recv.RECV_BYTES] * 4


def test_tls_failure_is_a_connection_error() -> None:
    class Broken:
        def recv(self, n: int) -> bytes:
            raise ssl.SSLError("bad record mac")

    _, err = kafka_recv._ssl_sock_recv(_Transport(Broken()))
    assert isinstance(err, kafka_errors.KafkaConnectionError)
    assert isinstance(err.args[0], ssl.SSLError)


def test_other_code_is_left_alone() -> None:
    """A kafka-python whose reads changed keeps its own."""

    class KafkaTCPTransport:
        def _sock_recv(self) -> tuple[bytes, None]:
            return b"theirs", None

    class KafkaSSLTransport(KafkaTCPTransport):
        pass

    module = types.SimpleNamespace(
        KafkaTCPTransport=KafkaTCPTransport, KafkaSSLTransport=KafkaSSLTransport
    )
    assert kafka_recv.install(module) is False
    assert KafkaTCPTransport()._sock_recv() == (b"theirs", None)
    assert kafka_recv.install(types.SimpleNamespace()) is False  # transports renamed


def test_installed_over_the_kafka_python_it_knows() -> None:
    """With the kafka-python this was written against, the worker's clients read big."""
    from kafka.net import transport

    original = getattr(transport.KafkaTCPTransport, "_scanstream_original_sock_recv", None)
    if original is None:
        assert kafka_recv.INSTALLED is False
        pytest.skip("this kafka-python's socket reads are not the ones kafka_recv knows")
    assert kafka_recv.INSTALLED is True
    assert transport.KafkaTCPTransport._sock_recv is kafka_recv._tcp_sock_recv
    assert transport.KafkaSSLTransport._sock_recv is kafka_recv._ssl_sock_recv
    assert kafka_recv.source_hash(original) == kafka_recv._KNOWN["KafkaTCPTransport"]
