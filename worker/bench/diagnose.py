"""What a benchmark phase whose worker answers nothing says about it, beside the worker's log.

Seen once on 2026-12-07 (one phase of about fifty that day): a fresh worker logged that it had
started and then answered none of the warm-up's six events in 180 s, with nothing more in its
log. Whether the broker then saw it as a member holding partitions (the worker stuck in its own
loop or its compute) or not at all (stuck outside its group) tells two different causes apart,
so a failed phase now says both: the group as the broker describes it, and the worker's own
``/healthz`` (which names a stalled loop). Seen again on the third day (with the code of
18bdebe, the first of twelve phases of ``worker.bench.ab``): a Stable group whose one member
held every partition, ``/healthz`` 200. It now also says where the events stopped: the events
topic's end offsets against the group's commits, the records on the findings and dead-letter
topics, and how many events the worker counted (its ``scanstream_events_total``).

>>> described = {"g": {"group_state": "Stable", "members": [{"client_id": "w-1",
...     "member_assignment": {"assigned_partitions": [{"topic": "t", "partitions": [0, 2]}]}}]}}
>>> group_summary(described, "g")
'group g Stable, 1 member(s): w-1 holds t[0, 2]'
>>> group_summary({"g": {"group_state": "Empty", "members": []}}, "g")
'group g Empty, 0 member(s)'
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from typing import Any

from kafka import TopicPartition

from worker.bench.scrape import events_counted
from worker.runtime import kafka as kafka_clients
from worker.settings import Settings


def group_summary(described: dict[str, Any], group: str) -> str:
    """One line from kafka-python's ``describe_groups`` answer for ``group``."""
    info = described.get(group) or {}
    members = info.get("members") or []
    parts = []
    for m in members:
        held = [
            f"{a.get('topic')}{sorted(a.get('partitions') or [])}"
            for a in (m.get("member_assignment") or {}).get("assigned_partitions") or []
        ]
        parts.append(f"{m.get('client_id')} holds {', '.join(held) or 'nothing'}")
    line = f"group {group} {info.get('group_state')}, {len(members)} member(s)"
    return f"{line}: {'; '.join(parts)}" if parts else line


def offsets_summary(bootstrap: str, settings: Settings) -> str:
    """The events topic's end offsets and the group's commits, partition by partition, and the
    records on the findings and dead-letter topics."""
    admin = kafka_clients.admin_client(bootstrap, settings)
    with contextlib.closing(admin):
        committed = admin.list_group_offsets(settings.group_id).get(settings.group_id) or {}
    reader = kafka_clients.consumer(bootstrap, settings, group_id=None)
    with contextlib.closing(reader):
        parts = []
        for topic in (settings.events_topic, settings.findings_topic, settings.dlq_topic):
            tps = [
                TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
            ends = reader.end_offsets(tps)
            if topic == settings.events_topic:
                pairs = [f"{ends[tp]}/{getattr(committed.get(tp), 'offset', '-')}" for tp in tps]
                parts.append(f"{topic} end/committed {' '.join(pairs)}")
            else:
                parts.append(f"{topic} {sum(ends.values())} records")
    return "; ".join(parts)


def diagnose(bootstrap: str, settings: Settings, metrics_port: int = 0) -> str:
    """The group's state at the broker, the offsets (:func:`offsets_summary`) and the worker's
    ``/healthz`` and event count, best effort, one line."""
    notes = []
    try:
        admin = kafka_clients.admin_client(bootstrap, settings)
        with contextlib.closing(admin):
            described = admin.describe_groups([settings.group_id])
        notes.append(group_summary(described, settings.group_id))
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        notes.append(f"group not described ({type(exc).__name__}: {exc})")
    try:
        notes.append(offsets_summary(bootstrap, settings))
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        notes.append(f"offsets not read ({type(exc).__name__}: {exc})")
    if metrics_port:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                counted = events_counted(resp.read().decode(errors="replace"))
            notes.append(f"the worker counted {counted:.0f} events")
        except OSError as exc:
            notes.append(f"/metrics unreachable ({exc})")
        url = f"http://127.0.0.1:{metrics_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode(errors="replace")[:200]
                notes.append(f"/healthz {resp.status}: {body}")
        except urllib.error.HTTPError as exc:  # 503: the reason is in the body
            notes.append(f"/healthz {exc.code}: {exc.read().decode(errors='replace')[:200]}")
        except OSError as exc:
            notes.append(f"/healthz unreachable ({exc})")
    return "; ".join(notes)
