"""The start-up probe against real loopback servers: each mismatch names the setting to fix."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from kafka import errors as kafka_errors

from worker.errors import BrokerError
from worker.runtime.connect import _LoginFailures, diagnose, wait_for_broker
from worker.settings import Secret, Settings

Handler = Callable[[socket.socket], None]


@contextlib.contextmanager
def _serve(handle: Handler) -> Iterator[int]:
    """A loopback server on a free port calling ``handle`` per connection, in daemon threads;
    it stops accepting and joins its threads when the block ends."""
    stop = threading.Event()
    workers: list[threading.Thread] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)

    def one(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(3.0)
            with contextlib.suppress(OSError):  # ssl.SSLError is an OSError
                handle(conn)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=one, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
        for worker in workers:
            worker.join(5)


def _tls_handler(context: ssl.SSLContext) -> Handler:
    def handle(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls, contextlib.suppress(OSError):
            tls.recv(1)  # until the client closes

    return handle


def _plain_handler(conn: socket.socket) -> None:
    """Like a plaintext Kafka port given a TLS ClientHello: read it, then hang up."""
    conn.recv(4096)


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@contextlib.contextmanager
def _tls_server(ca: trustme.CA, *names: str) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(*names).configure_cert(context)
    with _serve(_tls_handler(context)) as port:
        yield port


@pytest.fixture
def tls_port(server_ca: trustme.CA) -> Iterator[int]:
    with _tls_server(server_ca, "127.0.0.1", "localhost") as port:
        yield port


@pytest.fixture
def plain_port() -> Iterator[int]:
    with _serve(_plain_handler) as port:
        yield port


def _cafile(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _ssl(cafile: str, check_hostname: bool = True) -> Settings:
    return Settings(security_protocol="SSL", ssl_cafile=cafile, ssl_check_hostname=check_hostname)


def test_a_certificate_from_another_ca_names_ssl_cafile(tls_port: int, tmp_path: Path) -> None:
    other = _cafile(trustme.CA(), tmp_path / "other-ca.pem")
    message = diagnose(f"127.0.0.1:{tls_port}", _ssl(other), 3.0)
    assert "SCANSTREAM_SSL_CAFILE" in message and "not trusted" in message
    # The system CAs do not vouch for a private CA either.
    default = diagnose(f"127.0.0.1:{tls_port}", Settings(security_protocol="SSL"), 3.0)
    assert "SCANSTREAM_SSL_CAFILE" in default


def test_a_certificate_for_another_name_names_check_hostname(
    server_ca: trustme.CA, tmp_path: Path
) -> None:
    cafile = _cafile(server_ca, tmp_path / "ca.pem")
    with _tls_server(server_ca, "other.example") as port:
        for host in ("127.0.0.1", "localhost"):
            message = diagnose(f"{host}:{port}", _ssl(cafile), 3.0)
            assert "SCANSTREAM_SSL_CHECK_HOSTNAME" in message, (host, message)
            assert f"does not name {host}" in message
            assert "SCANSTREAM_SSL_CAFILE" not in message
        # With the check off, the CA alone decides: no complaint.
        assert diagnose(f"127.0.0.1:{port}", _ssl(cafile, check_hostname=False), 3.0) == ""


def test_the_right_ca_and_name_pass(server_ca: trustme.CA, tls_port: int, tmp_path: Path) -> None:
    cafile = _cafile(server_ca, tmp_path / "ca.pem")
    assert diagnose(f"127.0.0.1:{tls_port}", _ssl(cafile), 3.0) == ""
    assert diagnose(f"localhost:{tls_port}", _ssl(cafile), 3.0) == ""
    # Only the first bootstrap address is probed.
    assert diagnose(f"127.0.0.1:{tls_port},127.0.0.1:9", _ssl(cafile), 3.0) == ""


def test_plaintext_at_a_tls_listener_names_the_protocol(tls_port: int) -> None:
    message = diagnose(f"127.0.0.1:{tls_port}", Settings(), 3.0)
    assert "is a TLS listener" in message and "SCANSTREAM_SECURITY_PROTOCOL" in message
    sasl = Settings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password=Secret("p"),
    )
    assert "SCANSTREAM_SECURITY_PROTOCOL=SASL_PLAINTEXT" in diagnose(
        f"127.0.0.1:{tls_port}", sasl, 3.0
    )


def test_tls_at_a_plaintext_listener_names_the_protocol(
    plain_port: int, server_ca: trustme.CA, tmp_path: Path
) -> None:
    cafile = _cafile(server_ca, tmp_path / "ca.pem")
    started = time.monotonic()
    message = diagnose(f"127.0.0.1:{plain_port}", _ssl(cafile), 3.0)
    assert "does not answer TLS" in message and "SCANSTREAM_SECURITY_PROTOCOL=SSL" in message
    assert time.monotonic() - started < 3.0
    # Plaintext settings at a plaintext port: nothing to say.
    assert diagnose(f"127.0.0.1:{plain_port}", Settings(), 3.0) == ""


def test_tls_at_a_silent_listener_names_the_protocol(server_ca: trustme.CA, tmp_path: Path) -> None:
    """A port that accepts and never answers: the probe gives up within its timeout."""
    cafile = _cafile(server_ca, tmp_path / "ca.pem")
    gone = threading.Event()

    def silent(conn: socket.socket) -> None:
        gone.wait(3.0)

    with _serve(silent) as port:
        try:
            started = time.monotonic()
            message = diagnose(f"127.0.0.1:{port}", _ssl(cafile), 0.5)
            assert time.monotonic() - started < 2.5
        finally:
            gone.set()  # before the server joins its threads
    assert "does not answer TLS" in message and "SCANSTREAM_SECURITY_PROTOCOL" in message


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_a_refused_port_fails_within_the_connect_timeout() -> None:
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerError) as info:
        wait_for_broker(address, Settings(connect_timeout_s=1.5))
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.5
    message = str(info.value)
    assert f"Kafka at {address} did not answer within 1.5 s" in message
    assert "refused" in message and "KAFKA_BOOTSTRAP_SERVERS" in message


def test_an_address_that_is_not_host_port_is_named() -> None:
    with pytest.raises(BrokerError, match="is not host:port"):
        wait_for_broker("127.0.0.1", Settings(connect_timeout_s=0.5))


def test_wait_for_broker_stops_at_a_tls_mismatch_at_once(
    tls_port: int, plain_port: int, server_ca: trustme.CA, tmp_path: Path
) -> None:
    """A mismatch fails start in seconds, not after the (long) connect timeout."""
    cafile = _cafile(server_ca, tmp_path / "ca.pem")
    slow = Settings(connect_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="SCANSTREAM_SECURITY_PROTOCOL") as info:
        wait_for_broker(f"127.0.0.1:{tls_port}", slow)
    assert f"cannot connect to Kafka at 127.0.0.1:{tls_port}" in str(info.value)
    with pytest.raises(BrokerError, match="SCANSTREAM_SECURITY_PROTOCOL"):
        wait_for_broker(f"127.0.0.1:{plain_port}", _ssl(cafile).replace(connect_timeout_s=60))
    other = _cafile(trustme.CA(), tmp_path / "other.pem")
    with pytest.raises(BrokerError, match="SCANSTREAM_SSL_CAFILE"):
        wait_for_broker(f"127.0.0.1:{tls_port}", _ssl(other).replace(connect_timeout_s=60))
    assert time.monotonic() - started < 20


def test_login_failures_are_seen_in_kafka_python_log_records() -> None:
    handler = _LoginFailures()
    kafka_log = logging.getLogger("kafka")
    connection_log = logging.getLogger("kafka.net.connection")
    kafka_log.addHandler(handler)
    try:
        connection_log.error("%s: connection failed: %s", "<conn>", OSError("reset"))
        assert not handler.seen
        failure = kafka_errors.SaslAuthenticationFailedError("Authentication failed")
        connection_log.error("%s: authentication failed: %s", "<conn>", failure)
        assert handler.seen
    finally:
        kafka_log.removeHandler(handler)
    # Also when only the message names it, and for an unsupported mechanism.
    for record in (
        logging.LogRecord(
            "kafka.net", logging.ERROR, __file__, 1, "SaslAuthenticationFailed", (), None
        ),
        logging.LogRecord(
            "kafka.net.connection",
            logging.WARNING,
            __file__,
            1,
            "%s",
            (kafka_errors.UnsupportedSaslMechanismError("x"),),
            None,
        ),
    ):
        fresh = _LoginFailures()
        fresh.handle(record)
        assert fresh.seen


def test_tls_files_that_do_not_load_are_named(tls_port: int, tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    message = diagnose(f"127.0.0.1:{tls_port}", _ssl(str(bad)))
    assert "cannot be used" in message and "SCANSTREAM_SSL_CAFILE" in message, message
