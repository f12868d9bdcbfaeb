"""The secured local broker: a SASL_SSL listener, a CA made for the run, SCRAM users and ACLs.

``scanstream broker start --secure`` uses this to let tests and newcomers try the set-up a
hospital cluster has: clients must speak TLS, trust the run's CA (``ca.pem``) and log in with
SCRAM-SHA-512; the StandardAuthorizer denies what no ACL allows (``allow.everyone.if.no.acl.found``
is false). The CA and the broker certificate (for ``127.0.0.1`` and ``localhost``) come from
``trustme``; nothing is hand-rolled. Two users are made at start:

* ``admin``, a super user: the broker's own inter-broker login, and what the project's
  provisioning (topics, ACLs) uses;
* ``scanstream``, the client user, with only the ACLs :mod:`worker.runtime.acls` documents for
  the default topic and group names.

The controller listener stays on loopback and takes SASL PLAIN from the broker only (SCRAM
credentials live in the metadata the controller serves, so it cannot check them itself).
Passwords are random per run and kept, with the environment lines a client needs, in files only
the owner can read (``client.env``, ``admin.env``) in the broker's data folder.

>>> secure = SecureSetup.create(__import__("pathlib").Path(__import__("tempfile").mkdtemp()))
>>> sorted(secure.client_env("127.0.0.1:9093"))[:2]
['KAFKA_BOOTSTRAP_SERVERS', 'SCANSTREAM_SASL_MECHANISM']
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

MECHANISM: Final = "SCRAM-SHA-512"
ADMIN: Final = "admin"
CLIENT_USER: Final = "scanstream"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (0600 from creation on)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@dataclass(frozen=True)
class SecureSetup:
    """The files and credentials of one secured broker run (all under ``folder``)."""

    folder: str
    admin_password: str
    client_password: str

    @property
    def ca_file(self) -> str:
        return str(Path(self.folder) / "ca.pem")

    @property
    def keystore(self) -> str:
        return str(Path(self.folder) / "broker-keystore.pem")

    @classmethod
    def create(cls, folder: Path) -> SecureSetup:
        import trustme  # only the secured local broker needs it

        folder.mkdir(parents=True, exist_ok=True)
        from cryptography.hazmat.primitives import serialization

        ca = trustme.CA(
            organization_name="ScanStream local broker CA", key_type=trustme.KeyType.RSA
        )
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        setup = cls(str(folder), secrets.token_hex(16), secrets.token_hex(16))
        Path(setup.ca_file).write_bytes(ca.cert_pem.bytes())
        # Kafka's PEM keystore: the key in PKCS#8 (trustme writes SEC1/PKCS#1), then the chain.
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        keystore = pkcs8 + chain
        write_private(Path(setup.keystore), keystore.decode())
        write_private(Path(folder) / "client.env", _env_text(setup.client_env("")))
        return setup

    def scram_arguments(self) -> list[str]:
        """``kafka-storage format`` arguments that create both SCRAM users with the metadata."""
        return [
            f"--add-scram={MECHANISM}=[name={ADMIN},password={self.admin_password}]",
            f"--add-scram={MECHANISM}=[name={CLIENT_USER},password={self.client_password}]",
        ]

    def properties(self, port: int, controller_port: int) -> dict[str, str]:
        """The server.properties entries that replace the plaintext listener."""
        scram = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{self.admin_password}";'
        )
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{ADMIN}" password="{self.admin_password}" '
            f'user_{ADMIN}="{self.admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            # Every enabled mechanism needs its login module; the admin login is the broker's own.
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": scram,
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": scram,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": self.keystore,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": self.ca_file,
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def client_env(self, bootstrap: str, admin: bool = False) -> dict[str, str]:
        """The environment a client needs (the ``scanstream`` user, or ``admin``)."""
        env = {
            "SCANSTREAM_SECURITY_PROTOCOL": "SASL_SSL",
            "SCANSTREAM_SASL_MECHANISM": MECHANISM,
            "SCANSTREAM_SASL_USERNAME": ADMIN if admin else CLIENT_USER,
            "SCANSTREAM_SASL_PASSWORD": self.admin_password if admin else self.client_password,
            "SCANSTREAM_SSL_CAFILE": self.ca_file,
        }
        if bootstrap:
            env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, **env}
        return env

    def write_env_files(self, bootstrap: str) -> None:
        write_private(Path(self.folder) / "client.env", _env_text(self.client_env(bootstrap)))
        write_private(Path(self.folder) / "admin.env", _env_text(self.client_env(bootstrap, True)))


def _env_text(env: dict[str, str]) -> str:
    return "".join(f"export {k}={v}\n" for k, v in env.items())
