"""The secured local broker's files and properties, checked without starting Kafka."""

from __future__ import annotations

import contextlib
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from worker.broker_secure import ADMIN, CLIENT_USER, MECHANISM, SecureSetup
from worker.settings import Settings


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> SecureSetup:
    return SecureSetup.create(tmp_path_factory.mktemp("secure") / "data")


def test_create_writes_the_ca_the_keystore_and_client_env(setup: SecureSetup) -> None:
    folder = Path(setup.folder)
    assert setup.ca_file == str(folder / "ca.pem")
    ca = x509.load_pem_x509_certificate(Path(setup.ca_file).read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    text = Path(setup.keystore).read_text(encoding="ascii")
    assert text.startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, as Kafka's PEM keystore wants
    assert "RSA PRIVATE KEY" not in text and "EC PRIVATE KEY" not in text  # not PKCS#1/SEC1
    assert text.count("-----BEGIN CERTIFICATE-----") >= 1
    assert text.index("BEGIN CERTIFICATE") > text.index("END PRIVATE KEY")
    key = serialization.load_pem_private_key(text.encode(), password=None)
    [leaf, *_] = x509.load_pem_x509_certificates(text.encode())
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert leaf.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)
    assert leaf.issuer == ca.subject
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    for secret in (setup.keystore, folder / "client.env"):
        assert stat.S_IMODE(Path(secret).stat().st_mode) == 0o600, secret
    env = (folder / "client.env").read_text(encoding="utf-8")
    assert f"export SCANSTREAM_SASL_PASSWORD={setup.client_password}\n" in env
    assert setup.admin_password not in env
    assert "KAFKA_BOOTSTRAP_SERVERS" not in env  # not known before the broker runs


def test_passwords_are_random_per_run(setup: SecureSetup, tmp_path: Path) -> None:
    again = SecureSetup.create(tmp_path / "again")
    assert len(setup.admin_password) == len(setup.client_password) == 32
    assert setup.admin_password != setup.client_password
    assert {again.admin_password, again.client_password}.isdisjoint(
        {setup.admin_password, setup.client_password}
    )


def test_env_files(setup: SecureSetup, tmp_path: Path) -> None:
    run = SecureSetup.create(tmp_path / "run")
    run.write_env_files("127.0.0.1:9093")
    for name, user in (("client.env", CLIENT_USER), ("admin.env", ADMIN)):
        path = Path(run.folder) / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text(encoding="utf-8")
        assert text.startswith("export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9093\n")
        assert f"export SCANSTREAM_SASL_USERNAME={user}\n" in text


def test_properties_allow_only_authenticated_tls(setup: SecureSetup) -> None:
    props = setup.properties(9093, 9094)
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094"
    assert props["advertised.listeners"] == "SASL_SSL://127.0.0.1:9093"
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert protocols == {"SASL_SSL": "SASL_SSL", "CONTROLLER": "SASL_PLAINTEXT"}
    assert "PLAINTEXT" not in protocols.values()
    for listener in props["listeners"].split(","):
        name, _, address = listener.partition("://")
        assert name != "PLAINTEXT" and address.startswith("127.0.0.1:")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["authorizer.class.name"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    )
    assert props["super.users"] == "User:admin"
    assert props["sasl.mechanism.inter.broker.protocol"] == MECHANISM
    assert MECHANISM in props["sasl.enabled.mechanisms"].split(",")
    assert props["ssl.keystore.location"] == setup.keystore
    assert props["ssl.truststore.location"] == setup.ca_file
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert setup.admin_password in props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
    assert setup.client_password not in "".join(props.values())


def test_scram_arguments(setup: SecureSetup) -> None:
    assert setup.scram_arguments() == [
        f"--add-scram=SCRAM-SHA-512=[name=admin,password={setup.admin_password}]",
        f"--add-scram=SCRAM-SHA-512=[name=scanstream,password={setup.client_password}]",
    ]


def test_client_env_builds_valid_settings(setup: SecureSetup) -> None:
    env = setup.client_env("127.0.0.1:9093")
    assert set(env) == {
        "KAFKA_BOOTSTRAP_SERVERS",
        "SCANSTREAM_SECURITY_PROTOCOL",
        "SCANSTREAM_SASL_MECHANISM",
        "SCANSTREAM_SASL_USERNAME",
        "SCANSTREAM_SASL_PASSWORD",
        "SCANSTREAM_SSL_CAFILE",
    }
    assert env["SCANSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["SCANSTREAM_SASL_USERNAME"] == CLIENT_USER
    assert env["SCANSTREAM_SASL_PASSWORD"] == setup.client_password
    assert env["SCANSTREAM_SSL_CAFILE"] == setup.ca_file
    admin = setup.client_env("127.0.0.1:9093", admin=True)
    assert admin["SCANSTREAM_SASL_USERNAME"] == ADMIN
    assert admin["SCANSTREAM_SASL_PASSWORD"] == setup.admin_password
    assert "KAFKA_BOOTSTRAP_SERVERS" not in setup.client_env("")
    s = Settings.from_env(env)
    assert (s.bootstrap_servers, s.security_protocol, s.sasl_mechanism) == (
        "127.0.0.1:9093",
        "SASL_SSL",
        MECHANISM,
    )
    assert s.ssl_check_hostname  # the certificate names 127.0.0.1: no need to turn it off


@contextlib.contextmanager
def _tls_server(context: ssl.SSLContext, connections: int = 1) -> Iterator[int]:
    """``connections`` TLS handshakes on a loopback port, in a daemon thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5.0)

    def serve() -> None:
        for _ in range(connections):
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(5.0)
                    with context.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(6)
        listener.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_ca_verifies_the_broker_certificate(setup: SecureSetup, host: str) -> None:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(setup.keystore)  # the key and chain from the one PEM keystore
    client = ssl.create_default_context(cafile=setup.ca_file)
    assert client.check_hostname
    with (
        _tls_server(server) as port,
        socket.create_connection((host, port), timeout=5.0) as raw,
        client.wrap_socket(raw, server_hostname=host) as tls,
    ):
        peer = tls.getpeercert()
        assert peer and ("IP Address", "127.0.0.1") in peer["subjectAltName"]


def test_the_project_probe_accepts_the_broker_certificate(setup: SecureSetup) -> None:
    from worker.runtime.connect import diagnose

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(setup.keystore)
    settings = Settings.from_env(setup.client_env(""))
    # diagnose makes two handshakes: one unverified, one with these settings.
    with _tls_server(server, connections=2) as port:
        assert diagnose(f"127.0.0.1:{port}", settings, 5.0) == ""
