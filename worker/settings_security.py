"""The Kafka security settings that cannot work together, found at start, naming what to set.

Split out of worker/settings.py (one concept: TLS and SASL consistency); called from
``Settings.__post_init__``.

>>> from worker.settings import Settings
>>> Settings(security_protocol="SASL_SSL")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
worker.errors.ConfigError: SCANSTREAM_SECURITY_PROTOCOL=SASL_SSL needs SCANSTREAM_SASL_MECHANISM ...
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final

from worker.errors import ConfigError

if TYPE_CHECKING:
    from worker.settings import Settings

SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")


def check_security(s: Settings) -> None:
    """Kafka security settings that cannot work together fail here, naming what to set."""
    protocol = s.security_protocol
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"SCANSTREAM_SECURITY_PROTOCOL={protocol!r}: use one of {', '.join(SECURITY_PROTOCOLS)}"
        )
    sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
    if sasl:
        if s.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"SCANSTREAM_SECURITY_PROTOCOL={protocol} needs SCANSTREAM_SASL_MECHANISM set to "
                f"one of {', '.join(SASL_MECHANISMS)} (got {s.sasl_mechanism!r})"
            )
        if s.sasl_mechanism != "OAUTHBEARER" and not s.sasl_username:
            raise ConfigError(f"SASL {s.sasl_mechanism} needs SCANSTREAM_SASL_USERNAME")
        if not s.sasl_password:
            what = "the token" if s.sasl_mechanism == "OAUTHBEARER" else "the password"
            raise ConfigError(
                f"SASL {s.sasl_mechanism} needs {what} in SCANSTREAM_SASL_PASSWORD "
                "(or a file named by SCANSTREAM_SASL_PASSWORD_FILE)"
            )
    else:
        stray = [n for n in ("sasl_mechanism", "sasl_username") if getattr(s, n)]
        stray += ["sasl_password"] if s.sasl_password else []
        if stray:
            raise ConfigError(
                f"SCANSTREAM_{stray[0].upper()} is set but SCANSTREAM_SECURITY_PROTOCOL={protocol} "
                "does not use SASL; set SCANSTREAM_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
            )
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(s, name)
        if not path:
            continue
        if not tls:
            raise ConfigError(
                f"SCANSTREAM_{name.upper()} is set but SCANSTREAM_SECURITY_PROTOCOL={protocol} "
                "does not use TLS; set SCANSTREAM_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"SCANSTREAM_{name.upper()}={path!r} is not a readable file")
    if s.ssl_keyfile and not s.ssl_certfile:
        raise ConfigError("SCANSTREAM_SSL_KEYFILE needs SCANSTREAM_SSL_CERTFILE (the client cert)")
