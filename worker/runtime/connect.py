"""The start-up probe: is the broker there, and does it accept these security settings?

kafka-python reports a failed TLS handshake or a refused login as a broker that never answers,
which would read as a hang until the connect timeout. :func:`wait_for_broker` finds the cause
first, with short probes of its own, so that start fails within seconds with a message that
names the setting to fix:

* nothing listens, or the name does not resolve: ``KAFKA_BOOTSTRAP_SERVERS``;
* a certificate the CA does not vouch for: ``SCANSTREAM_SSL_CAFILE``;
* a name the certificate does not hold: the address, or ``SCANSTREAM_SSL_CHECK_HOSTNAME``;
* TLS spoken at a plaintext port, or plaintext at a TLS port: ``SCANSTREAM_SECURITY_PROTOCOL``;
* a refused login: ``SCANSTREAM_SASL_USERNAME``/``_PASSWORD``/``_MECHANISM`` (kafka-python logs
  it and retries; it is caught from its log record, the bootstrap tried in slices of 5 s).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time

from kafka import KafkaAdminClient
from kafka import errors as kafka_errors

from worker.errors import BrokerError
from worker.runtime.security import client_security, tls_context
from worker.settings import Settings

_SLICE_S = 5.0


def wait_for_broker(bootstrap: str, settings: Settings) -> None:
    """Return once the broker answers a metadata request with these security settings; raise
    BrokerError naming the address, the cause and the setting to fix otherwise, within about
    ``settings.connect_timeout_s``.

    >>> wait_for_broker("127.0.0.1:9", Settings(connect_timeout_s=1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    worker.errors.BrokerError: Kafka at 127.0.0.1:9 did not answer within 1 s (...refused...); ...
    """
    timeout_s = settings.connect_timeout_s
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        why = _tcp_cause(bootstrap, max(0.2, min(remaining, 5.0)))
        if not why:
            break
        cause = why
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"Kafka at {bootstrap} did not answer within {timeout_s:g} s ({cause}); "
                "check KAFKA_BOOTSTRAP_SERVERS (or SCANSTREAM_BOOTSTRAP_SERVERS) and that the "
                "broker is up and reachable, or raise SCANSTREAM_CONNECT_TIMEOUT_S"
            )
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    # The port answers. kafka-python would retry a TLS mismatch until the deadline: probe first.
    mismatch = diagnose(bootstrap, settings, max(0.5, min(5.0, remaining)))
    if mismatch:
        raise BrokerError(f"cannot connect to Kafka at {bootstrap}: {mismatch}")
    _bootstrap(bootstrap, settings, deadline)


def _bootstrap(bootstrap: str, settings: Settings, deadline: float) -> None:
    """A Kafka metadata round trip before ``deadline``, in slices, watching for a refused login."""
    refused = _LoginFailures()
    kafka_log = logging.getLogger("kafka")
    kafka_log.addHandler(refused)
    try:
        while True:
            slice_ms = int(max(1.0, min(deadline - time.monotonic(), _SLICE_S)) * 1000)
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=bootstrap,
                    bootstrap_timeout_ms=slice_ms,
                    request_timeout_ms=max(slice_ms, 5000),
                    **client_security(settings),
                )
            except Exception as exc:
                if refused.seen or isinstance(exc, _LOGIN_ERRORS):
                    raise BrokerError(
                        f"cannot log in to Kafka at {bootstrap}: {login_hint(settings)}"
                    ) from exc
                if time.monotonic() < deadline:
                    continue
                raise BrokerError(
                    f"Kafka at {bootstrap} accepts connections but did not answer as a Kafka "
                    f"broker within {settings.connect_timeout_s:g} s ({type(exc).__name__}: "
                    f"{exc}); check the address and port and SCANSTREAM_SECURITY_PROTOCOL (and "
                    "the SASL settings, if the listener needs them)"
                ) from exc
            admin.close()
            return
    finally:
        kafka_log.removeHandler(refused)


_LOGIN_ERRORS = (
    kafka_errors.SaslAuthenticationFailedError,
    kafka_errors.UnsupportedSaslMechanismError,
)


class _LoginFailures(logging.Handler):
    """Notes kafka-python's log records of a refused SASL login (it retries them silently)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        text = str(record.msg)
        if any(isinstance(a, _LOGIN_ERRORS) for a in args) or "SaslAuthenticationFailed" in text:
            self.seen = True


def _tcp_cause(bootstrap: str, timeout_s: float) -> str:
    """'' if any bootstrap address accepts a TCP connection, else why none did."""
    causes = []
    for address in bootstrap.split(","):
        host, _, port = address.strip().rpartition(":")
        host = host.strip("[]") or "localhost"
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return ""
        except ValueError:
            causes.append(f"{address.strip()!r} is not host:port")
        except socket.gaierror as exc:
            causes.append(f"cannot resolve {host}: {exc.strerror}")
        except ConnectionRefusedError:
            causes.append(f"connection to {address.strip()} refused")
        except TimeoutError:
            causes.append(f"connection to {address.strip()} timed out")
        except OSError as exc:
            causes.append(f"{address.strip()}: {exc.strerror or exc}")
    return "; ".join(causes) or "no address given"


def diagnose(bootstrap: str, settings: Settings, timeout_s: float = 5.0) -> str:
    """Why the first bootstrap address refuses these security settings ('' if TLS is fine).

    Only the transport is probed here; a refused login is recognised from the client's error.
    """
    host, _, port_text = bootstrap.split(",")[0].strip().rpartition(":")
    host = host.strip("[]") or "localhost"
    try:
        port = int(port_text)
    except ValueError:
        return ""
    tls_wanted = settings.security_protocol.endswith("SSL")
    speaks_tls, cause = _tls_probe(host, port, settings, timeout_s)
    protocol = f"SCANSTREAM_SECURITY_PROTOCOL={settings.security_protocol}"
    if tls_wanted:
        if isinstance(cause, ssl.SSLCertVerificationError):
            if "hostname" in str(cause.verify_message or cause).lower() or "IP address" in str(
                cause
            ):
                return (
                    f"the broker's certificate does not name {host} ({cause.verify_message}); "
                    "connect by a name the certificate holds, or (not for production) set "
                    "SCANSTREAM_SSL_CHECK_HOSTNAME=false"
                )
            if "expired" in str(cause.verify_message):
                return "the broker's TLS certificate has expired; it must be renewed on the broker"
            return (
                f"the broker's TLS certificate is not trusted ({cause.verify_message}); set "
                "SCANSTREAM_SSL_CAFILE to the PEM file of the CA that signed it"
            )
        if isinstance(cause, _UnusableFiles):
            return str(cause)
        if not speaks_tls and cause is not None:
            return (
                f"{bootstrap} does not answer TLS ({_brief(cause)}); {protocol} expects a TLS "
                "listener: use PLAINTEXT or SASL_PLAINTEXT if the listener is not TLS, or the "
                "address of the broker's TLS listener"
            )
        return ""
    if speaks_tls:
        return (
            f"{bootstrap} is a TLS listener but {protocol}; set SCANSTREAM_SECURITY_PROTOCOL to "
            "SSL or SASL_SSL (with SCANSTREAM_SSL_CAFILE for a private CA)"
        )
    return ""


class _UnusableFiles(Exception):
    """The configured CA, certificate or key files do not load."""


def _tls_probe(
    host: str, port: int, settings: Settings, timeout_s: float
) -> tuple[bool, BaseException | None]:
    """(the port answered a TLS handshake, the error if the handshake failed)."""
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    speaks_tls = _handshake(host, port, unverified, timeout_s) is None
    if not speaks_tls or not settings.security_protocol.endswith("SSL"):
        return speaks_tls, None if speaks_tls else ConnectionError("no TLS handshake")
    try:
        context = tls_context(settings)
    except (OSError, ssl.SSLError) as exc:
        return True, _UnusableFiles(
            f"the TLS files cannot be used ({_brief(exc)}); check that SCANSTREAM_SSL_CAFILE "
            "holds PEM certificates and SCANSTREAM_SSL_CERTFILE / SCANSTREAM_SSL_KEYFILE a PEM "
            "client certificate and its unencrypted key"
        )
    return True, _handshake(host, port, context, timeout_s)


def _handshake(
    host: str, port: int, context: ssl.SSLContext, timeout_s: float
) -> BaseException | None:
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except (OSError, ssl.SSLError) as exc:
        return exc


def login_hint(settings: Settings) -> str:
    """What to check when the broker refused the login."""
    return (
        f"the broker refused the SASL {settings.sasl_mechanism} login of "
        f"{settings.sasl_username or 'the token'}; check SCANSTREAM_SASL_USERNAME and "
        "SCANSTREAM_SASL_PASSWORD (or SCANSTREAM_SASL_PASSWORD_FILE) and that "
        "SCANSTREAM_SASL_MECHANISM is one the listener enables"
    )


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
