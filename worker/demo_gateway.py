"""The demo's gateway leg: DICOM in by C-STORE, as a scanner or PACS sends it, to findings.

An in-process :class:`~worker.gateway.service.Gateway` on a free port publishes to the demo's
events topic, which the demo's worker consumes. A real DICOM client sends a few uncompressed
pydicom samples over one association: dcmtk's ``storescu`` when it is on PATH, else pynetdicom's
SCU. Each C-STORE status is printed, then the findings (or dead letters) those instances
produced, matched by SOP Instance UID (the gateway makes the event ids). The leg is skipped,
saying why, when the studies topic cannot be made sure of (e.g. a principal without Create on
it, as on ``broker start --secure``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from worker.demo import pydicom_test_files, show_finding
from worker.errors import ScanStreamError
from worker.gateway.service import Gateway
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import InstanceHeader
from worker.settings import Settings

#: Uncompressed samples: every storage SCU can send them as they are.
GATEWAY_SAMPLES = ("CT_small.dcm", "MR_small.dcm")
_CLIENT_AE = "DEMO-SCU"


def send_storescu(tool: str, port: int, called_ae: str, paths: list[Path]) -> dict[Path, str]:
    """C-STORE ``paths`` over one association with dcmtk's storescu; the status of each."""
    cmd = [tool, "-v", "-nh", "-aet", _CLIENT_AE, "-aec", called_ae, "127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": os.environ.get("TCP_NODELAY", "1")}  # see bench.gateway
    done = subprocess.run(
        [*cmd, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    statuses: dict[Path, str] = {}
    current: Path | None = None
    for line in (done.stdout + done.stderr).splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        response = re.search(r"Received Store Response \((.+)\)", line)
        if sending:
            current = Path(sending.group(1).strip())
        elif response and current is not None:
            statuses[current] = response.group(1)
            current = None
    for path in paths:
        statuses.setdefault(path, f"no response (storescu exit code {done.returncode})")
    return statuses


def send_pynetdicom(port: int, called_ae: str, paths: list[Path]) -> dict[Path, str]:
    """The same with pynetdicom's SCU (when dcmtk is not installed)."""
    import pydicom
    from pynetdicom import AE

    datasets = {path: pydicom.dcmread(path) for path in paths}
    ae = AE(ae_title=_CLIENT_AE)
    for ds in datasets.values():
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    statuses = dict.fromkeys(paths, "association rejected or aborted")
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    try:
        if assoc.is_established:
            for path, ds in datasets.items():
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    statuses[path] = "no response"
                else:
                    statuses[path] = "Success" if code == 0 else f"failure 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return statuses


def _watcher(bootstrap: str, settings: Settings) -> Any:
    watcher = kafka_clients.consumer(bootstrap, settings, group_id=None)
    tps = [
        TopicPartition(t, p)
        for t in (settings.findings_topic, settings.dlq_topic)
        for p in (watcher.partitions_for_topic(t) or {0})
    ]
    watcher.assign(tps)
    watcher.seek_to_end(*tps)
    for tp in tps:
        watcher.position(tp)  # resolve "end" now, before anything is sent
    return watcher


def gateway_leg(settings: Settings, bootstrap: str, timeout_s: float = 60.0) -> int:
    """Send :data:`GATEWAY_SAMPLES` through the gateway; 0 when all were stored and answered."""
    deadline = time.monotonic() + timeout_s
    paths = [pydicom_test_files() / n for n in GATEWAY_SAMPLES]
    paths = [p for p in paths if p.exists()]
    tool = shutil.which("storescu")
    client = "dcmtk storescu" if tool else "pynetdicom SCU"
    print(f"\nthrough the gateway: {len(paths)} samples by DICOM C-STORE ({client})")
    try:
        kafka_clients.ensure_topics(bootstrap, settings, also=(settings.studies_topic,))
    except ScanStreamError as exc:
        print(f"gateway leg skipped: {exc}")
        return 0
    names = {InstanceHeader.read(p.read_bytes()).sop_uid: p.name for p in paths}
    watcher = _watcher(bootstrap, settings)
    gateway = Gateway(settings.replace(gateway_port=0), bootstrap)
    try:
        port = gateway.start()
        ae = settings.gateway_ae_title
        if tool:
            statuses = send_storescu(tool, port, ae, paths)
        else:
            statuses = send_pynetdicom(port, ae, paths)
        for path in paths:
            print(f"C-STORE {path.name} -> {statuses[path]}")
        stored = {p.name for p in paths if statuses[p] == "Success"}
        pending = {uid: name for uid, name in names.items() if name in stored}
        print(f"the gateway acknowledged {gateway.scp.stored} instance(s) to {ae}@{port}\n")
        while pending and time.monotonic() < deadline:
            for tp, records in watcher.poll(timeout_ms=200).items():
                for record in records:
                    _answer(record, tp.topic == settings.dlq_topic, pending)
    finally:
        gateway.stop()
        watcher.close()
    if pending:
        print("no answer for: " + ", ".join(sorted(pending.values())))
    answered = len(stored) - len(pending)
    print(f"{answered}/{len(paths)} C-STOREd instances answered")
    return 0 if len(stored) == len(paths) and not pending else 1


def _answer(record: Any, dead: bool, pending: dict[str, str]) -> None:
    if dead:
        uid = InstanceHeader.read(record.value).sop_uid  # a dead letter keeps the original
        if uid in pending:
            reason = dict(record.headers or []).get("scanstream.error.reason", b"?").decode()
            print(f"{pending.pop(uid):<30} dead letter: {reason}")
        return
    finding = json.loads(record.value)
    name = pending.pop(finding.get("sop_instance_uid") or "", None)
    if name is not None:
        show_finding(f"{name} (C-STORE)", finding)
