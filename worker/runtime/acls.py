"""Least privilege: the exact ACLs each ScanStream role needs, a start-up check, provisioning.

The worker needs (resource, name, operation), with the StandardAuthorizer's implications (Read
and Write imply Describe; Write on a topic implies IdempotentWrite):

=================  ==========================================  =========
resource           name                                        operation
=================  ==========================================  =========
topic              events topic (``scans.events``)             Read
group              consumer group (``scanstream``)             Read
topic              findings, alerts, dead-letter topics        Write
transactional-id   prefix ``scanstream-<group>-`` (exactly-once)  Write
topic              each of the four (only with CREATE_TOPICS)  Create
=================  ==========================================  =========

The dead-letter topic holds the original DICOM: grant Read on it only to whoever handles dead
letters, as for the events topic. A publisher needs Write on the events topic; the gateway
Write on the events and studies topics; a service that
reads results needs Read on the findings or alerts topic and on its own group.

:func:`check_access` runs at start: it asks the broker which operations this principal may do
(KIP-430 authorized operations) and fails with the missing grant named, instead of a consumer
that silently never gets records or a producer that fails on the first result.

>>> [g.line("User:w") for g in worker_grants(Settings(create_topics=False))][:1]
['--allow-principal User:w --operation Read --topic scans.events']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from worker.errors import BrokerError
from worker.runtime.kafka import topic_names
from worker.settings import Settings

log = logging.getLogger(__name__)

Resource = Literal["topic", "group", "transactional-id", "cluster"]


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL: ``operation`` on ``resource`` ``name`` (a prefix if ``prefixed``)."""

    resource: Resource
    name: str
    operation: str  # Read, Write, Create, Describe
    prefixed: bool = False

    def line(self, principal: str) -> str:
        """The ``kafka-acls.sh --add`` arguments for this grant."""
        option = {"transactional-id": "--transactional-id", "cluster": "--cluster"}.get(
            self.resource, f"--{self.resource}"
        )
        target = option if self.resource == "cluster" else f"{option} {self.name}"
        pattern = " --resource-pattern-type prefixed" if self.prefixed else ""
        return f"--allow-principal {principal} --operation {self.operation} {target}{pattern}"


def transactional_prefix(settings: Settings) -> str:
    """The transactional ids of exactly-once workers begin with this (see runtime/loop.py)."""
    return f"scanstream-{settings.group_id}-"


def worker_grants(settings: Settings) -> list[Grant]:
    """Exactly what a worker with these settings needs, nothing more."""
    events, *outputs = topic_names(settings)  # outputs: results (and SRs, when on)
    grants = [
        Grant("topic", events, "Read"),
        Grant("group", settings.group_id, "Read"),
        *(Grant("topic", t, "Write") for t in outputs),
    ]
    if settings.delivery == "exactly-once":
        grants.append(Grant("transactional-id", transactional_prefix(settings), "Write", True))
    if settings.create_topics:
        grants += [Grant("topic", t, "Create") for t in (events, *outputs)]
    return grants


def publisher_grants(settings: Settings) -> list[Grant]:
    """``scanstream publish``: Write on the events topic (Create too, if it creates it)."""
    grants = [Grant("topic", settings.events_topic, "Write")]
    if settings.create_topics:
        grants.append(Grant("topic", settings.events_topic, "Create"))
    return grants


def gateway_grants(settings: Settings) -> list[Grant]:
    """The gateway: Write on the events and studies topics (Create too, if it creates them)."""
    topics = (settings.events_topic, settings.studies_topic)
    grants = [Grant("topic", t, "Write") for t in topics]
    if settings.create_topics:
        grants += [Grant("topic", t, "Create") for t in topics]
    return grants


def export_grants(settings: Settings) -> list[Grant]:
    """``scanstream export``: Read on the SR topic and its group, Write on the dead letters."""
    from worker.export.loop import export_group
    from worker.export.service import check_export_settings

    name = check_export_settings(settings)
    assert settings.sr_topic is not None  # checked above
    grants = [
        Grant("topic", settings.sr_topic, "Read"),
        Grant("group", export_group(settings, name), "Read"),
        Grant("topic", settings.dlq_topic, "Write"),
    ]
    if settings.create_topics:
        grants += [Grant("topic", t, "Create") for t in (settings.sr_topic, settings.dlq_topic)]
    return grants


def summarize_grants(settings: Settings) -> list[Grant]:
    """``scanstream summarize``: Read on the findings and studies topics and its group; Write on
    the series topic (Create too, if it creates it)."""
    from worker.series.service import series_group

    grants = [
        Grant("topic", settings.findings_topic, "Read"),
        Grant("topic", settings.studies_topic, "Read"),
        Grant("group", series_group(settings), "Read"),
        Grant("topic", settings.series_topic, "Write"),
    ]
    if settings.create_topics:
        grants.append(Grant("topic", settings.series_topic, "Create"))
    return grants


def reader_grants(settings: Settings) -> list[Grant]:
    """A reader of results (``scanstream report``, an alerting service reading by assignment):
    Read on the findings and alerts topics. A reader in a consumer group also needs Read on
    that group, which only its operator can name."""
    return [Grant("topic", t, "Read") for t in (settings.findings_topic, settings.alerts_topic)]


def dead_letter_grants(settings: Settings) -> list[Grant]:
    """Whoever handles dead letters: Read on the dead-letter topic, which holds the original
    records (and so their patient data), kept apart from :func:`reader_grants` for that reason."""
    return [Grant("topic", settings.dlq_topic, "Read")]


def to_acl(grant: Grant, principal: str) -> Any:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    kind = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
        "cluster": ResourceType.CLUSTER,
    }[grant.resource]
    pattern = ACLResourcePatternType.PREFIXED if grant.prefixed else ACLResourcePatternType.LITERAL
    name = "kafka-cluster" if grant.resource == "cluster" else grant.name
    return ACL(
        principal=principal,
        host="*",
        operation=ACLOperation[grant.operation.upper()],
        permission_type=ACLPermissionType.ALLOW,
        resource_pattern=ResourcePattern(kind, name, pattern),
    )


def grant(admin: Any, principal: str, grants: list[Grant]) -> None:
    """Create the ACLs (idempotent: the broker keeps one copy of an identical ACL)."""
    result = admin.create_acls([to_acl(g, principal) for g in grants])
    failed = result.get("failed") or []
    if failed:
        raise BrokerError(f"could not create ACLs for {principal}: {failed}")


def revoke(admin: Any, principal: str, grants: list[Grant]) -> None:
    admin.delete_acls([to_acl(g, principal) for g in grants])


def check_access(admin: Any, settings: Settings) -> None:
    """Fail at start, naming the missing ACL, when this principal lacks a worker permission.

    Only meaningful where the broker runs an authorizer: without one every operation is
    allowed and this passes.
    """
    needed: dict[str, str] = {settings.events_topic: "READ"}
    outputs = (settings.findings_topic, settings.alerts_topic, settings.dlq_topic)
    for topic in (*outputs, *([settings.sr_topic] if settings.sr_topic else [])):
        needed[topic] = "WRITE"
    missing = []
    from kafka import errors as kafka_errors

    for topic, want in needed.items():
        try:
            [info] = admin.describe_topics([topic])
        except kafka_errors.AuthorizationError:
            info = {"error_code": kafka_errors.TopicAuthorizationFailedError.errno}
        allowed = set(info.get("authorized_operations") or ())
        if info.get("error_code") or want not in allowed:
            missing.append(f"{want.title()} on topic {topic}")
    try:
        described = admin.describe_groups([settings.group_id], include_authorized_operations=True)
        group = described.get(settings.group_id, {}) if isinstance(described, dict) else {}
    except kafka_errors.AuthorizationError as exc:
        group = {"error": repr(exc)}
    except kafka_errors.KafkaError:  # e.g. no coordinator yet on a fresh cluster: join tells
        group = {}
    # A group that does not exist yet has no authorized operations to report: then only a
    # refused Describe tells; a missing Read shows when the worker joins (also a clear error).
    operations = group.get("authorized_operations")
    if "GroupAuthorizationFailed" in str(group.get("error")) or (
        operations is not None and "READ" not in operations
    ):
        missing.append(f"Read on group {settings.group_id}")
    if missing:
        raise BrokerError(
            "this Kafka principal lacks ACLs the worker needs: "
            + "; ".join(missing)
            + " (see the README's ACL guide, or `scanstream acls` for the exact list)"
        )


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def provision_local(bootstrap: str, setup: Any) -> None:
    """The secured local broker: default topics, made by ``admin``; and for the ``scanstream``
    user, the worker, gateway, publisher and reader roles on the default names, for both delivery
    modes and for the demo's own groups (``scanstream-demo-*``), so that run, publish and
    demo work as that user. A production worker gets :func:`worker_grants` only."""
    from worker.broker_secure import CLIENT_USER
    from worker.runtime import kafka as kafka_clients

    env = setup.client_env(bootstrap, admin=True)
    admin_settings = Settings.from_env(env)
    kafka_clients.ensure_topics(bootstrap, admin_settings, also=(admin_settings.studies_topic,))
    base = Settings(create_topics=False)
    grants = [
        *worker_grants(base),
        *gateway_grants(base),
        *worker_grants(base.replace(delivery="exactly-once")),
        *publisher_grants(base),
        *reader_grants(base),
        *dead_letter_grants(base),
        Grant("group", f"{base.group_id}-demo-", "Read", True),
        Grant("transactional-id", "scanstream-", "Write", True),
    ]
    admin = kafka_clients.admin_client(bootstrap, admin_settings)
    try:
        grant(admin, f"User:{CLIENT_USER}", grants)
    finally:
        admin.close()
