"""Kafka security settings: every combination that cannot work fails at start, naming the fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

from worker.errors import ConfigError
from worker.settings import FILE_SECRETS, Secret, Settings

PASSWORD = "s3cr3t-Pa55word-do-not-print"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cafile(tmp_path: Path, ca: trustme.CA) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def client_pair(tmp_path: Path, ca: trustme.CA) -> tuple[str, str]:
    cert = ca.issue_cert("client.example")
    certfile, keyfile = tmp_path / "client.pem", tmp_path / "client.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return str(certfile), str(keyfile)


def _scram(**extra: str) -> dict[str, str]:
    return {
        "SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
        "SCANSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
        "SCANSTREAM_SASL_USERNAME": "worker",
        "SCANSTREAM_SASL_PASSWORD": PASSWORD,
        **extra,
    }


def _fails(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert PASSWORD not in message
    return message


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SCANSTREAM_SECURITY_PROTOCOL": "TLS"}, "SCANSTREAM_SECURITY_PROTOCOL='TLS'"),
        ({"SCANSTREAM_SECURITY_PROTOCOL": "sasl_ssl"}, "SCANSTREAM_SECURITY_PROTOCOL"),
        (
            {"SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL", "SCANSTREAM_SASL_PASSWORD": PASSWORD},
            "SCANSTREAM_SASL_MECHANISM",
        ),
        (_scram(SCANSTREAM_SASL_MECHANISM="GSSAPI"), "SCANSTREAM_SASL_MECHANISM"),
        (_scram(SCANSTREAM_SASL_USERNAME=""), "SCANSTREAM_SASL_USERNAME"),
        (_scram(SCANSTREAM_SASL_PASSWORD=""), "SCANSTREAM_SASL_PASSWORD"),
        (
            {
                "SCANSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "SCANSTREAM_SASL_MECHANISM": "PLAIN",
            },
            "SCANSTREAM_SASL_USERNAME",
        ),
        (
            {
                "SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
                "SCANSTREAM_SASL_MECHANISM": "OAUTHBEARER",
            },
            "SCANSTREAM_SASL_PASSWORD",
        ),
        # SASL settings without a SASL protocol: the protocol is what to fix.
        ({"SCANSTREAM_SASL_MECHANISM": "PLAIN"}, "SCANSTREAM_SECURITY_PROTOCOL=SASL_SSL"),
        ({"SCANSTREAM_SASL_USERNAME": "worker"}, "SCANSTREAM_SASL_USERNAME is set"),
        ({"SCANSTREAM_SASL_PASSWORD": PASSWORD}, "SCANSTREAM_SASL_PASSWORD is set"),
        (
            {"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SASL_MECHANISM": "PLAIN"},
            "SCANSTREAM_SECURITY_PROTOCOL=SASL_SSL",
        ),
        # min ISR above the replication factor can never be met.
        (
            {
                "SCANSTREAM_TOPIC_REPLICATION_FACTOR": "2",
                "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS": "3",
            },
            "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS",
        ),
        ({"SCANSTREAM_TOPIC_REPLICATION_FACTOR": "0"}, "SCANSTREAM_TOPIC_REPLICATION_FACTOR"),
        ({"SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS": "0"}, "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS"),
        ({"SCANSTREAM_TOPIC_REPLICATION_FACTOR": "three"}, "SCANSTREAM_TOPIC_REPLICATION_FACTOR"),
        ({"SCANSTREAM_CREATE_TOPICS": "maybe"}, "SCANSTREAM_CREATE_TOPICS"),
        ({"SCANSTREAM_SSL_CHECK_HOSTNAME": "sometimes"}, "SCANSTREAM_SSL_CHECK_HOSTNAME"),
    ],
)
def test_a_misconfiguration_names_the_variable_to_fix(env: dict[str, str], variable: str) -> None:
    assert variable in _fails(env)


def test_sasl_protocols_need_mechanism_user_and_password() -> None:
    assert "needs SCANSTREAM_SASL_MECHANISM" in _fails({"SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL"})
    assert "SCANSTREAM_SASL_USERNAME" in _fails(_scram(SCANSTREAM_SASL_USERNAME=""))
    message = _fails(_scram(SCANSTREAM_SASL_PASSWORD=""))
    assert "SCANSTREAM_SASL_PASSWORD" in message and "SCANSTREAM_SASL_PASSWORD_FILE" in message


@pytest.mark.parametrize("name", ["SSL_CAFILE", "SSL_CERTFILE", "SSL_KEYFILE"])
@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_an_ssl_file_without_tls_names_the_protocol(cafile: str, name: str, protocol: str) -> None:
    env = {"SCANSTREAM_SECURITY_PROTOCOL": protocol, f"SCANSTREAM_{name}": cafile}
    if protocol == "SASL_PLAINTEXT":
        env.update(SCANSTREAM_SASL_MECHANISM="PLAIN", SCANSTREAM_SASL_USERNAME="w")
        env.update(SCANSTREAM_SASL_PASSWORD=PASSWORD)
    message = _fails(env)
    assert f"SCANSTREAM_{name} is set" in message
    assert "SCANSTREAM_SECURITY_PROTOCOL=SSL or SASL_SSL" in message


def test_a_missing_or_unreadable_ca_file_names_ssl_cafile(tmp_path: Path, cafile: str) -> None:
    missing = str(tmp_path / "nope.pem")
    message = _fails({"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SSL_CAFILE": missing})
    assert "SCANSTREAM_SSL_CAFILE" in message and missing in message
    folder = _fails({"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SSL_CAFILE": str(tmp_path)})
    assert "SCANSTREAM_SSL_CAFILE" in folder and "not a readable file" in folder
    os.chmod(cafile, 0)
    try:
        if os.access(cafile, os.R_OK):  # root reads every file: nothing to refuse then
            return
        unreadable = _fails(
            {"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SSL_CAFILE": cafile}
        )
        assert "SCANSTREAM_SSL_CAFILE" in unreadable
    finally:
        os.chmod(cafile, 0o600)


def test_the_other_ssl_files_are_checked_too(tmp_path: Path, cafile: str) -> None:
    missing = str(tmp_path / "nope.pem")
    for name in ("SSL_CERTFILE", "SSL_KEYFILE"):
        env = {"SCANSTREAM_SECURITY_PROTOCOL": "SSL", f"SCANSTREAM_{name}": missing}
        if name == "SSL_KEYFILE":
            env["SCANSTREAM_SSL_CERTFILE"] = cafile
        assert f"SCANSTREAM_{name}=" in _fails(env)


def test_a_keyfile_needs_a_certfile(client_pair: tuple[str, str]) -> None:
    _, keyfile = client_pair
    message = _fails({"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SSL_KEYFILE": keyfile})
    assert "SCANSTREAM_SSL_KEYFILE needs SCANSTREAM_SSL_CERTFILE" in message


def test_the_password_never_shows(cafile: str) -> None:
    s = Settings.from_env(_scram(SCANSTREAM_SSL_CAFILE=cafile))
    assert s.sasl_password.reveal() == PASSWORD
    assert s.sasl_password == Secret(PASSWORD)
    for text in (repr(s), str(s), repr(s.describe()), str(s.sasl_password), f"{s.sasl_password}"):
        assert PASSWORD not in text
    assert s.describe()["sasl_password"] == "***"
    assert Settings().describe()["sasl_password"] == ""
    # Through an override too, and in every ConfigError a bad combination raises.
    over = Settings.from_env(_scram(SCANSTREAM_SASL_PASSWORD=""), sasl_password=PASSWORD)
    assert isinstance(over.sasl_password, Secret)
    assert PASSWORD not in repr(over)
    with pytest.raises(ConfigError) as info:
        Settings(sasl_password=Secret(PASSWORD))
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)


def test_password_from_a_file(tmp_path: Path) -> None:
    assert "sasl_password" in FILE_SECRETS
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    env = _scram(SCANSTREAM_SASL_PASSWORD="", SCANSTREAM_SASL_PASSWORD_FILE=str(secret))
    s = Settings.from_env(env)
    assert s.sasl_password.reveal() == PASSWORD  # the trailing newline dropped, one only
    assert PASSWORD not in repr(s) and PASSWORD not in repr(s.describe())
    secret.write_text(PASSWORD + "\n\n", encoding="utf-8")
    assert Settings.from_env(env).sasl_password.reveal() == PASSWORD + "\n"
    secret.write_text(PASSWORD, encoding="utf-8")  # no newline at all
    assert Settings.from_env(env).sasl_password.reveal() == PASSWORD


def test_the_pseudonym_key_from_a_file(tmp_path: Path) -> None:
    """Every secret has its _FILE variant, the pseudonym key included (a Kubernetes mount)."""
    key = tmp_path / "pseudonym-key"
    key.write_text("k" * 32 + "\n", encoding="utf-8")
    s = Settings.from_env({"SCANSTREAM_PSEUDONYM_KEY_FILE": str(key)})
    assert s.pseudonym_key.reveal() == "k" * 32
    assert "k" * 32 not in repr(s) and "k" * 32 not in repr(s.describe())


def test_password_and_password_file_together_is_an_error(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD, encoding="utf-8")
    message = _fails(_scram(SCANSTREAM_SASL_PASSWORD_FILE=str(secret)))
    assert "SCANSTREAM_SASL_PASSWORD" in message and "SCANSTREAM_SASL_PASSWORD_FILE" in message


@pytest.mark.parametrize("content", ["", "\n"])
def test_an_empty_password_file_is_an_error(tmp_path: Path, content: str) -> None:
    secret = tmp_path / "password"
    secret.write_text(content, encoding="utf-8")
    env = _scram(SCANSTREAM_SASL_PASSWORD="", SCANSTREAM_SASL_PASSWORD_FILE=str(secret))
    message = _fails(env)
    assert "SCANSTREAM_SASL_PASSWORD_FILE" in message and "empty" in message


def test_an_unreadable_password_file_is_an_error(tmp_path: Path) -> None:
    for path in (tmp_path / "missing", tmp_path):  # absent; a folder
        env = _scram(SCANSTREAM_SASL_PASSWORD="", SCANSTREAM_SASL_PASSWORD_FILE=str(path))
        message = _fails(env)
        assert f"SCANSTREAM_SASL_PASSWORD_FILE={str(path)!r} cannot be read" in message
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00bad")
    env = _scram(SCANSTREAM_SASL_PASSWORD="", SCANSTREAM_SASL_PASSWORD_FILE=str(binary))
    assert "SCANSTREAM_SASL_PASSWORD_FILE" in _fails(env)


def test_a_password_file_without_sasl_names_the_protocol(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD, encoding="utf-8")
    message = _fails({"SCANSTREAM_SASL_PASSWORD_FILE": str(secret)})
    assert "SCANSTREAM_SECURITY_PROTOCOL" in message


def test_oauthbearer_needs_only_the_token(tmp_path: Path) -> None:
    env = {
        "SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
        "SCANSTREAM_SASL_MECHANISM": "OAUTHBEARER",
        "SCANSTREAM_SASL_PASSWORD": "eyJ.token",
    }
    s = Settings.from_env(env)
    assert s.sasl_username is None and s.sasl_password.reveal() == "eyJ.token"
    token = tmp_path / "token"
    token.write_text("eyJ.from-file\n", encoding="utf-8")
    env = {**env, "SCANSTREAM_SASL_PASSWORD": "", "SCANSTREAM_SASL_PASSWORD_FILE": str(token)}
    assert Settings.from_env(env).sasl_password.reveal() == "eyJ.from-file"
    env.pop("SCANSTREAM_SASL_PASSWORD_FILE")
    assert "the token" in _fails(env)


def test_valid_combinations_build(cafile: str, client_pair: tuple[str, str]) -> None:
    certfile, keyfile = client_pair
    assert Settings.from_env({}).security_protocol == "PLAINTEXT"
    ssl_only = Settings.from_env({"SCANSTREAM_SECURITY_PROTOCOL": "SSL"})  # the system CAs
    assert ssl_only.ssl_cafile is None and ssl_only.ssl_check_hostname is True
    mtls = Settings.from_env(
        {
            "SCANSTREAM_SECURITY_PROTOCOL": "SSL",
            "SCANSTREAM_SSL_CAFILE": cafile,
            "SCANSTREAM_SSL_CERTFILE": certfile,
            "SCANSTREAM_SSL_KEYFILE": keyfile,
            "SCANSTREAM_SSL_CHECK_HOSTNAME": "false",
        }
    )
    assert (mtls.ssl_cafile, mtls.ssl_certfile, mtls.ssl_keyfile) == (cafile, certfile, keyfile)
    assert mtls.ssl_check_hostname is False
    # A certfile holding its key is fine without a keyfile.
    Settings.from_env({"SCANSTREAM_SECURITY_PROTOCOL": "SSL", "SCANSTREAM_SSL_CERTFILE": certfile})
    for mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        for protocol in ("SASL_SSL", "SASL_PLAINTEXT"):
            s = Settings.from_env(
                _scram(SCANSTREAM_SECURITY_PROTOCOL=protocol, SCANSTREAM_SASL_MECHANISM=mechanism)
            )
            assert (s.security_protocol, s.sasl_mechanism) == (protocol, mechanism)
    s = Settings.from_env(_scram(SCANSTREAM_SSL_CAFILE=cafile))
    assert s.ssl_cafile == cafile


def test_topic_settings() -> None:
    default = Settings.from_env({})
    assert (default.create_topics, default.topic_replication_factor) == (True, 1)
    assert default.topic_min_insync_replicas == 1
    s = Settings.from_env(
        {
            "SCANSTREAM_CREATE_TOPICS": "false",
            "SCANSTREAM_TOPIC_REPLICATION_FACTOR": "3",
            "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS": "2",
        }
    )
    assert (s.create_topics, s.topic_replication_factor, s.topic_min_insync_replicas) == (
        False,
        3,
        2,
    )
    equal = Settings(topic_replication_factor=2, topic_min_insync_replicas=2)
    assert equal.topic_min_insync_replicas == 2
    with pytest.raises(ConfigError, match="SCANSTREAM_TOPIC_REPLICATION_FACTOR"):
        Settings(topic_replication_factor=1, topic_min_insync_replicas=2)


def test_every_security_variable_is_known() -> None:
    for key in (
        "SCANSTREAM_SECURITY_PROTOCOL",
        "SCANSTREAM_SASL_MECHANISM",
        "SCANSTREAM_SASL_USERNAME",
        "SCANSTREAM_SASL_PASSWORD",
        "SCANSTREAM_SASL_PASSWORD_FILE",
        "SCANSTREAM_REFERENCE_AUTH_FILE",
        "SCANSTREAM_SSL_CAFILE",
        "SCANSTREAM_SSL_CERTFILE",
        "SCANSTREAM_SSL_KEYFILE",
        "SCANSTREAM_SSL_CHECK_HOSTNAME",
        "SCANSTREAM_CREATE_TOPICS",
        "SCANSTREAM_TOPIC_REPLICATION_FACTOR",
        "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS",
    ):
        Settings.from_env({key: ""})  # an unknown one would raise
    assert "SCANSTREAM_SSL_CAFILE" in _fails({"SCANSTREAM_SSL_CA_FILE": "x"})
