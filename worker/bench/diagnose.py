"""What a benchmark phase whose worker answers nothing says about it, beside the worker's log.

Seen once on 2026-12-07 (one phase of about fifty that day): a fresh worker logged that it had
started and then answered none of the warm-up's six events in 180 s, with nothing more in its
log. Whether the broker then saw it as a member holding partitions (the worker stuck in its own
loop or its compute) or not at all (stuck outside its group) tells two different causes apart,
so a failed phase now says both: the group as the broker describes it, and the worker's own
``/healthz`` (which names a stalled loop).

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


def diagnose(bootstrap: str, settings: Settings, metrics_port: int = 0) -> str:
    """The group's state at the broker and the worker's ``/healthz``, best effort, one line."""
    notes = []
    try:
        admin = kafka_clients.admin_client(bootstrap, settings)
        with contextlib.closing(admin):
            described = admin.describe_groups([settings.group_id])
        notes.append(group_summary(described, settings.group_id))
    except Exception as exc:  # noqa: BLE001 - a diagnosis must not hide the failure it explains
        notes.append(f"group not described ({type(exc).__name__}: {exc})")
    if metrics_port:
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
