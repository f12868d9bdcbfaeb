"""client_security: the kafka-python arguments for each security protocol."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.net.sasl.oauth import AbstractTokenProvider, SaslMechanismOAuth

from worker.runtime.security import client_security, tls_context
from worker.settings import Secret, Settings


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    client = ca.issue_cert("client.example")
    paths = {k: str(tmp_path / f"{k}.pem") for k in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(paths["ca"])
    client.cert_chain_pems[0].write_to_path(paths["cert"])
    client.private_key_pem.write_to_path(paths["key"])
    return paths


def _known_to_kafka_python(kwargs: dict[str, object]) -> None:
    for cls in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
        unknown = set(kwargs) - set(cls.DEFAULT_CONFIG)
        assert not unknown, (cls.__name__, unknown)


def test_plaintext_gives_only_the_protocol() -> None:
    assert client_security(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_ssl_gives_the_files_and_hostname_check(files: dict[str, str]) -> None:
    s = Settings(
        security_protocol="SSL",
        ssl_cafile=files["ca"],
        ssl_certfile=files["cert"],
        ssl_keyfile=files["key"],
    )
    kwargs = client_security(s)
    assert kwargs == {
        "security_protocol": "SSL",
        "ssl_cafile": files["ca"],
        "ssl_certfile": files["cert"],
        "ssl_keyfile": files["key"],
        "ssl_check_hostname": True,
    }
    _known_to_kafka_python(kwargs)
    off = client_security(Settings(security_protocol="SSL", ssl_check_hostname=False))
    assert off["ssl_check_hostname"] is False and off["ssl_cafile"] is None
    assert not any(k.startswith("sasl") for k in off)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_with_a_password(files: dict[str, str], mechanism: str) -> None:
    s = Settings(
        security_protocol="SASL_SSL",
        sasl_mechanism=mechanism,
        sasl_username="worker",
        sasl_password=Secret("pw"),
        ssl_cafile=files["ca"],
    )
    kwargs = client_security(s)
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == mechanism
    assert (kwargs["sasl_plain_username"], kwargs["sasl_plain_password"]) == ("worker", "pw")
    assert kwargs["ssl_cafile"] == files["ca"] and kwargs["ssl_check_hostname"] is True
    assert "sasl_oauth_token_provider" not in kwargs
    _known_to_kafka_python(kwargs)
    plain = client_security(s.replace(security_protocol="SASL_PLAINTEXT", ssl_cafile=None))
    assert not any(k.startswith("ssl") for k in plain)
    assert plain["sasl_plain_password"] == "pw"


def test_oauthbearer_gives_a_token_provider() -> None:
    s = Settings(
        security_protocol="SASL_SSL", sasl_mechanism="OAUTHBEARER", sasl_password=Secret("eyJ.t")
    )
    kwargs = client_security(s)
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert provider.token() == "eyJ.t"
    assert provider.extensions() == {}
    # kafka-python accepts it and sends the token as the bearer.
    sent = SaslMechanismOAuth(**kwargs).auth_bytes()
    assert sent == b"n,,\x01auth=Bearer eyJ.t\x01\x01"
    assert "sasl_plain_password" not in kwargs and "sasl_plain_username" not in kwargs
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    _known_to_kafka_python(kwargs)


def test_tls_context_follows_the_settings(files: dict[str, str]) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=files["ca"])
    context = tls_context(s)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert len(context.get_ca_certs()) == 1
    assert not tls_context(s.replace(ssl_check_hostname=False)).check_hostname
    tls_context(s.replace(ssl_certfile=files["cert"], ssl_keyfile=files["key"]))
