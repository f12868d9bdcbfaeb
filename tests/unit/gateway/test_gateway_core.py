"""The gateway without a broker: durability rule, claim-check files, study records, C-STORE
status codes (a fake producer and fake pynetdicom events)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from worker.gateway.durable import DurablePublisher, NotDurable, write_durably
from worker.gateway.scp import NOT_AUTHORISED, OUT_OF_RESOURCES, SUCCESS, StoreSCP
from worker.gateway.studies import FORGET_AFTER_S, StudyTracker
from worker.phantoms import ct_slice, encode_ct
from worker.settings import Settings


class _Future:
    def __init__(self, ok: bool) -> None:
        self.ok = ok

    def get(self, timeout: float) -> None:
        if not self.ok:
            raise TimeoutError("no ack")

    def succeeded(self) -> bool:
        return self.ok


class FakeProducer:
    def __init__(self, ack: bool = True) -> None:
        self.ack, self.sent = ack, []  # type: ignore[var-annotated]

    def send(self, topic: str, key: Any, value: Any, headers: Any) -> _Future:
        self.sent.append((topic, key, value, dict(headers)))
        return _Future(self.ack)

    def close(self, timeout: float) -> None:
        pass


def test_small_instances_go_inline_keyed_by_study() -> None:
    data = encode_ct(ct_slice(1, 32), study="st1")
    producer = FakeProducer()
    stored = DurablePublisher(Settings(), "unused:9092", producer).store(data)
    [(topic, key, value, headers)] = producer.sent
    assert topic == "scans.events" and value == data  # the bytes as received
    assert key == stored.header.study_uid.encode() and key
    assert headers["content-type"] == b"application/dicom"
    assert headers["event-id"] == stored.event_id.encode()


def test_large_instances_go_by_a_fsynced_claim_check_file(tmp_path: Path) -> None:
    data = encode_ct(ct_slice(2, 64), study="st2")
    settings = Settings(gateway_inline_max_bytes=1024, claim_check_dir=str(tmp_path))
    producer = FakeProducer()
    stored = DurablePublisher(settings, "unused:9092", producer).store(data)
    [(_, _, value, headers)] = producer.sent
    doc = json.loads(value)
    digest = hashlib.sha256(data).hexdigest()
    assert headers["content-type"] == b"application/json"
    assert doc["sha256"] == digest and doc["size_bytes"] == len(data)
    assert stored.claim_check == str(tmp_path / f"{digest}.dcm")
    assert Path(doc["uri"].removeprefix("file://")).read_bytes() == data
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_no_ack_in_time_is_not_durable_and_too_large_without_claim_check_is_refused() -> None:
    data = encode_ct(ct_slice(3, 32))
    with pytest.raises(NotDurable, match="did not acknowledge"):
        DurablePublisher(Settings(), "unused:9092", FakeProducer(ack=False)).store(data)
    settings = Settings(gateway_inline_max_bytes=100, max_message_bytes=200)
    producer = FakeProducer()
    with pytest.raises(NotDurable, match="SCANSTREAM_CLAIM_CHECK_DIR"):
        DurablePublisher(settings, "unused:9092", producer).store(data)
    assert producer.sent == []


def test_write_durably_is_content_addressed_and_replaces_atomically(tmp_path: Path) -> None:
    first = write_durably(tmp_path / "c", b"abc")
    again = write_durably(tmp_path / "c", b"abc")
    assert first == again and Path(first).read_bytes() == b"abc"
    assert stat.S_ISREG(os.stat(first).st_mode)


def test_study_records_revisions_and_late_instances() -> None:
    now = [0.0]
    tracker = StudyTracker(quiet_s=5, clock=lambda: now[0])
    for i in range(3):
        tracker.note("1.2", "1.2.1", f"1.2.1.{i}", "1.2.840.10008.5.1.4.1.1.2", f"e{i}")
    tracker.note("", "x", "y", "z", "e-no-study")  # not tracked
    now[0] = 4.9
    assert tracker.due() == []
    now[0] = 5.0
    [record] = tracker.due()
    assert (record["revision"], record["instance_count"]) == (1, 3)
    assert record["series"] == [{"series_instance_uid": "1.2.1", "instance_count": 3}]
    assert tracker.due() != []  # not acknowledged yet: offered again
    tracker.announced(record)
    assert tracker.due() == []
    now[0] = 20.0
    tracker.note("1.2", "1.2.2", "1.2.2.0", "1.2.840.10008.5.1.4.1.1.2", "late")
    now[0] = 26.0
    [late] = tracker.due()
    assert (late["revision"], late["instance_count"]) == (2, 4)
    tracker.announced(late)
    now[0] = 26.0 + 5 + FORGET_AFTER_S
    assert tracker.due() == []
    tracker.note("1.2", "1.2.3", "1.2.3.0", "1.2.840.10008.5.1.4.1.1.2", "after-forgetting")
    now[0] += 5
    [fresh] = tracker.due()
    assert (fresh["revision"], fresh["instance_count"]) == (1, 1)


class _Requestor:
    def __init__(self, ae_title: str, address: str) -> None:
        self.ae_title, self.address = ae_title, address


class _Assoc:
    def __init__(self, ae_title: str, address: str) -> None:
        self.requestor = _Requestor(ae_title, address)


class FakeEvent:
    def __init__(self, data: bytes, ae_title: str = "CT1", address: str = "10.0.0.5") -> None:
        self.data, self.assoc = data, _Assoc(ae_title, address)

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        return self.data


def _scp(settings: Settings, producer: FakeProducer) -> StoreSCP:
    publisher = DurablePublisher(settings, "unused:9092", producer)
    return StoreSCP(settings, publisher, StudyTracker(settings.study_quiet_s))


def test_c_store_statuses() -> None:
    data = encode_ct(ct_slice(4, 32), study="st4")
    settings = Settings(gateway_allowed_callers=("CT1@10.0.0.5", "@10.0.0.9"))
    producer = FakeProducer()
    scp = _scp(settings, producer)
    # An address-only entry allows any AE title there: no AE title check at association.
    assert scp.ae.require_calling_aet == []
    only_titles = _scp(Settings(gateway_allowed_callers=("CT1", "MR1@10.0.0.7")), producer)
    assert only_titles.ae.require_calling_aet == ["CT1", "MR1"]
    assert scp.handle_store(FakeEvent(data)) == SUCCESS
    assert scp.handle_store(FakeEvent(data, "MR1", "10.0.0.9")) == SUCCESS
    assert scp.handle_store(FakeEvent(data, "CT1", "10.0.0.6")) == NOT_AUTHORISED
    assert len(producer.sent) == 2 and scp.stored == 2
    slow = _scp(Settings(), FakeProducer(ack=False))
    assert slow.handle_store(FakeEvent(data)) == OUT_OF_RESOURCES and slow.stored == 0


def test_every_decodable_transfer_syntax_is_offered() -> None:
    scp = _scp(Settings(), FakeProducer())
    ct = [c for c in scp.ae.supported_contexts if c.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"]
    offered = set(ct[0].transfer_syntax)
    for uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"):
        assert uid in offered
    assert "1.2.840.10008.1.2.4.100" not in offered  # MPEG-2: no decoder here
