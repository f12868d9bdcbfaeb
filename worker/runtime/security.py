"""Kafka TLS and SASL for every client the project makes, and start-up errors that name the fix.

:func:`client_security` turns the settings into kafka-python arguments; every producer,
consumer and admin client (worker, publisher, demo, bench) is built with them, in
worker/runtime/kafka.py. Hostname verification is on unless ``SCANSTREAM_SSL_CHECK_HOSTNAME``
turns it off. OAUTHBEARER sends ``SCANSTREAM_SASL_PASSWORD`` (or the content of
``SCANSTREAM_SASL_PASSWORD_FILE``) as the bearer token, read once at start: a rotated token
needs a restart (a token provider that fetches from an identity provider is not built in).
Start-up errors that name the setting to fix are worker/runtime/connect.py's.

>>> sorted(client_security(__import__("worker.settings").settings.Settings()))
['security_protocol']
"""

from __future__ import annotations

import ssl
from typing import Any

from kafka.net.sasl.oauth import AbstractTokenProvider

from worker.settings import Settings


class _StaticToken(AbstractTokenProvider):  # type: ignore[misc]
    """The bearer token from the settings, read once at start (a restart picks up a new one)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._token = token

    def token(self) -> str:
        return self._token


def client_security(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for TLS and SASL (just the protocol when plaintext)."""
    protocol = settings.security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        kwargs.update(
            ssl_check_hostname=settings.ssl_check_hostname,
            ssl_cafile=settings.ssl_cafile,
            ssl_certfile=settings.ssl_certfile,
            ssl_keyfile=settings.ssl_keyfile,
        )
    if protocol.startswith("SASL_"):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_mechanism == "OAUTHBEARER":
            kwargs["sasl_oauth_token_provider"] = _StaticToken(settings.sasl_password.reveal())
        else:
            kwargs["sasl_plain_username"] = settings.sasl_username
            kwargs["sasl_plain_password"] = settings.sasl_password.reveal()
    return kwargs


def tls_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context the clients use (for the probe; kafka-python builds its own alike)."""
    context = ssl.create_default_context(cafile=settings.ssl_cafile)
    context.check_hostname = settings.ssl_check_hostname
    if settings.ssl_certfile:
        context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    return context
