"""Least privilege: the exact grants, their kafka-acls.sh lines and ACL objects, the start check."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    ResourceType,
)

from tests.unit.runtime.fakes import worker_producer_options
from worker.errors import BrokerError
from worker.runtime import acls
from worker.runtime.acls import Grant, check_access, to_acl, transactional_prefix, worker_grants
from worker.settings import Settings

TOPICS = ("scans.events", "scans.findings", "scans.alerts", "scans.dlq")


def _expected(delivery: str, create: bool, group: str = "scanstream") -> list[Grant]:
    grants = [
        Grant("topic", "scans.events", "Read"),
        Grant("group", group, "Read"),
        Grant("topic", "scans.findings", "Write"),
        Grant("topic", "scans.alerts", "Write"),
        Grant("topic", "scans.dlq", "Write"),
    ]
    if delivery == "exactly-once":
        grants.append(Grant("transactional-id", f"scanstream-{group}-", "Write", prefixed=True))
    if create:
        grants += [Grant("topic", t, "Create") for t in TOPICS]
    return grants


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
@pytest.mark.parametrize("create", [True, False])
def test_worker_grants_are_exactly_what_the_worker_needs(delivery: str, create: bool) -> None:
    s = Settings(delivery=delivery, create_topics=create)  # type: ignore[arg-type]
    assert worker_grants(s) == _expected(delivery, create)


def test_worker_grants_follow_the_names() -> None:
    s = Settings(delivery="exactly-once", create_topics=False).namespaced("ward7")
    assert worker_grants(s) == [
        Grant("topic", "ward7.events", "Read"),
        Grant("group", "ward7", "Read"),
        Grant("topic", "ward7.findings", "Write"),
        Grant("topic", "ward7.alerts", "Write"),
        Grant("topic", "ward7.dlq", "Write"),
        Grant("transactional-id", "scanstream-ward7-", "Write", prefixed=True),
    ]


def test_the_transactional_prefix_is_what_the_loop_uses() -> None:
    """worker/runtime/loop.py names its transactional id ``scanstream-<group>-<worker id>``: the
    granted prefix must cover it (read from the loop's source so a change there fails here)."""
    import inspect

    from worker.runtime import loop

    source = inspect.getsource(loop)
    assert 'f"scanstream-{settings.group_id}-{settings.worker_id}"' in source
    s = Settings(group_id="radiology", worker_id="pod-0", delivery="exactly-once")
    transactional_id = f"scanstream-{s.group_id}-{s.worker_id}"
    prefix = transactional_prefix(s)
    assert prefix == "scanstream-radiology-" and transactional_id.startswith(prefix)
    [txn] = [g for g in worker_grants(s) if g.resource == "transactional-id"]
    assert txn.prefixed and transactional_id.startswith(txn.name)


def test_the_loop_really_asks_for_that_transactional_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the loop's producer with a stand-in and look at the id it asks for."""
    s = Settings(group_id="radiology", worker_id="pod-0", delivery="exactly-once")
    seen = worker_producer_options(monkeypatch, s)
    assert seen["transactional_id"] == "scanstream-radiology-pod-0"
    assert seen["transactional_id"].startswith(transactional_prefix(s))


def test_grant_lines() -> None:
    assert Grant("topic", "scans.events", "Read").line("User:w") == (
        "--allow-principal User:w --operation Read --topic scans.events"
    )
    assert Grant("group", "scanstream", "Read").line("User:w") == (
        "--allow-principal User:w --operation Read --group scanstream"
    )
    assert Grant("transactional-id", "scanstream-g-", "Write", True).line("User:w") == (
        "--allow-principal User:w --operation Write --transactional-id scanstream-g- "
        "--resource-pattern-type prefixed"
    )
    assert Grant("cluster", "", "Describe").line("User:w") == (
        "--allow-principal User:w --operation Describe --cluster"
    )


def test_to_acl_builds_kafka_python_acls() -> None:
    expected = {
        "topic": ResourceType.TOPIC,
        "group": ResourceType.GROUP,
        "transactional-id": ResourceType.TRANSACTIONAL_ID,
    }
    for g in worker_grants(Settings(delivery="exactly-once")):
        acl = to_acl(g, "User:w")
        assert isinstance(acl, ACL)
        assert acl.principal == "User:w" and acl.host == "*"
        assert acl.permission_type is ACLPermissionType.ALLOW
        assert acl.operation is ACLOperation[g.operation.upper()]
        pattern = acl.resource_pattern
        assert pattern.resource_type is expected[g.resource]
        assert pattern.resource_name == g.name
        literal = ACLResourcePatternType.LITERAL
        assert pattern.pattern_type is (ACLResourcePatternType.PREFIXED if g.prefixed else literal)
        acl.validate()  # kafka-python's own check: no ANY/UNKNOWN in an ACL to create
    cluster = to_acl(Grant("cluster", "", "Describe"), "User:w")
    assert cluster.resource_pattern.resource_type is ResourceType.CLUSTER
    assert cluster.resource_pattern.resource_name == "kafka-cluster"


class FakeAdmin:
    """describe_topics/describe_groups shaped like kafka-python 3's KafkaAdminClient."""

    def __init__(
        self,
        topics: dict[str, list[str] | BaseException | int] | None = None,
        group: dict[str, Any] | BaseException | None = None,
    ) -> None:
        self.topics: dict[str, list[str] | BaseException | int] = {
            "scans.events": ["READ", "DESCRIBE"],
            "scans.findings": ["WRITE", "DESCRIBE", "IDEMPOTENT_WRITE"],
            "scans.alerts": ["WRITE", "DESCRIBE"],
            "scans.dlq": ["WRITE", "DESCRIBE"],
            **(topics or {}),
        }
        self.group = {"error": None, "authorized_operations": ["READ", "DESCRIBE"]}
        self.group_answer = group if group is not None else self.group
        self.asked_groups: list[Any] = []

    def describe_topics(self, topics: list[str]) -> list[dict[str, Any]]:
        [name] = topics
        answer = self.topics[name]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, int):  # an error code in the response, as for a denied topic
            return [{"name": name, "error_code": answer, "authorized_operations": None}]
        return [{"name": name, "error_code": 0, "authorized_operations": answer}]

    def describe_groups(
        self, group_ids: list[str], include_authorized_operations: bool = False
    ) -> dict[str, Any]:
        self.asked_groups.append((group_ids, include_authorized_operations))
        if isinstance(self.group_answer, BaseException):
            raise self.group_answer
        return {group_ids[0]: self.group_answer}


def _missing(admin: FakeAdmin, settings: Settings | None = None) -> str:
    with pytest.raises(BrokerError) as info:
        check_access(admin, settings or Settings())
    message = str(info.value)
    assert message.startswith("this Kafka principal lacks ACLs the worker needs: ")
    assert "scanstream acls" in message
    return message.split(": ", 1)[1].split(" (see", 1)[0]


def test_check_access_passes_when_every_grant_is_there() -> None:
    admin = FakeAdmin()
    check_access(admin, Settings())
    assert admin.asked_groups == [(["scanstream"], True)]


def test_check_access_names_exactly_the_missing_grants() -> None:
    assert _missing(FakeAdmin({"scans.alerts": ["DESCRIBE"]})) == "Write on topic scans.alerts"
    assert _missing(FakeAdmin({"scans.events": ["WRITE", "DESCRIBE"]})) == (
        "Read on topic scans.events"
    )
    denied = kafka_errors.TopicAuthorizationFailedError.errno
    both = FakeAdmin({"scans.events": denied, "scans.dlq": []})
    assert _missing(both) == "Read on topic scans.events; Write on topic scans.dlq"
    raised = FakeAdmin({"scans.findings": kafka_errors.TopicAuthorizationFailedError("no")})
    assert _missing(raised) == "Write on topic scans.findings"


def test_check_access_names_a_missing_group_read() -> None:
    refused = FakeAdmin(group=kafka_errors.GroupAuthorizationFailedError("no"))
    assert _missing(refused) == "Read on group scanstream"
    # As kafka-python reports a refused DescribeGroups: in the group's 'error'.
    error = str(kafka_errors.GroupAuthorizationFailedError(""))
    in_answer = FakeAdmin(group={"error": error, "authorized_operations": None})
    assert _missing(in_answer) == "Read on group scanstream"
    describe_only = FakeAdmin(group={"error": None, "authorized_operations": ["DESCRIBE"]})
    assert _missing(describe_only) == "Read on group scanstream"
    everything = FakeAdmin(
        {"scans.events": kafka_errors.TopicAuthorizationFailedError("no"), "scans.alerts": []},
        kafka_errors.GroupAuthorizationFailedError("no"),
    )
    assert _missing(everything) == (
        "Read on topic scans.events; Write on topic scans.alerts; Read on group scanstream"
    )


def test_check_access_follows_the_names() -> None:
    s = Settings().namespaced("ward7")
    admin = FakeAdmin()
    admin.topics = {
        "ward7.events": ["READ"],
        "ward7.findings": ["WRITE"],
        "ward7.alerts": ["READ"],
        "ward7.dlq": ["WRITE"],
    }
    assert _missing(admin, s) == "Write on topic ward7.alerts"
    assert admin.asked_groups == [(["ward7"], True)]


@pytest.mark.parametrize(
    "answer",
    [
        kafka_errors.CoordinatorNotAvailableError("fresh cluster"),
        kafka_errors.KafkaTimeoutError("slow"),
        {"error": None, "authorized_operations": None},  # a group not made yet
        {},
    ],
)
def test_check_access_does_not_fail_without_a_group_answer(answer: Any) -> None:
    check_access(FakeAdmin(group=answer), Settings())


def test_check_access_asks_for_write_on_the_sr_topic_when_srs_are_on() -> None:
    s = Settings(sr_topic="scans.sr")
    assert _missing(FakeAdmin({"scans.sr": ["READ"]}), s) == "Write on topic scans.sr"
    check_access(FakeAdmin({"scans.sr": ["WRITE"]}), s)


def test_other_role_grants() -> None:
    s = Settings(create_topics=False)
    assert acls.publisher_grants(s) == [Grant("topic", "scans.events", "Write")]
    assert acls.gateway_grants(s) == [
        Grant("topic", "scans.events", "Write"),
        Grant("topic", "scans.studies", "Write"),
    ]
    # Results readers never see the dead letters (the original records, with patient data).
    assert acls.reader_grants(s) == [
        Grant("topic", "scans.findings", "Read"),
        Grant("topic", "scans.alerts", "Read"),
    ]
    assert acls.dead_letter_grants(s) == [Grant("topic", "scans.dlq", "Read")]
    creating = Settings(create_topics=True)
    assert Grant("topic", "scans.events", "Create") in acls.publisher_grants(creating)
    assert {g for g in acls.gateway_grants(creating) if g.operation == "Create"} == {
        Grant("topic", "scans.events", "Create"),
        Grant("topic", "scans.studies", "Create"),
    }
