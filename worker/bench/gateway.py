"""``scanstream bench --stage gateway``: C-STORE into the gateway against dcmtk's own storescp.

The workload: ``instances`` 512x512 16-bit CT slices (:func:`worker.phantoms.encode_ct`, Explicit
VR Little Endian, about 512 KiB each, 16 distinct phantoms cycled, every instance its own SOP
Instance UID) written as ``.dcm`` files to a temporary folder. dcmtk's ``storescu`` sends the
whole folder over one association, twice:

* to the gateway (:class:`worker.gateway.service.Gateway`, in this process, on a free port, with
  topics of its own on the broker named by ``KAFKA_BOOTSTRAP_SERVERS``, a running local one, or
  one started for the run), which answers each C-STORE only once the broker acknowledged its
  event (``acks=all``);
* to ``storescp`` (a subprocess writing each instance to a temporary folder, no fsync): the
  floor of what a DICOM receiver costs on this machine.

Both dcmtk tools run with ``TCP_NODELAY=1`` in their environment (unless it is set already):
this dcmtk build leaves Nagle's algorithm on by default, and the interplay with delayed ACKs
then costs about 40 ms per instance whoever the receiver is (10 s for 200 slices instead of
0.4 s to storescp), which would measure the sender's socket option rather than the receivers.

Each run is timed wall clock from ``storescu``'s start to its exit; instances per second =
instances / that time, ``ratio`` = gateway / storescp. Both counts are verified: the gateway's
``scp.stored`` and the events on its topic (distinct SOP Instance UIDs read back), and the files
storescp wrote. Timings are reported, never asserted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

from kafka import TopicPartition

from worker import broker
from worker.bench import BenchError
from worker.gateway.service import Gateway
from worker.phantoms import ct_slice, encode_ct
from worker.runtime import kafka as kafka_clients
from worker.runtime.publisher import InstanceHeader
from worker.settings import Settings

DEFAULT_INSTANCES: Final = 200
_DISTINCT: Final = 16  # phantoms generated, then cycled (the SOP Instance UIDs all differ)
_TIMEOUT_S: Final = 300.0  # bound on one storescu run and on reading the events back
_HOST: Final = "127.0.0.1"


def _dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": os.environ.get("TCP_NODELAY", "1")}


def dcmtk_tools() -> tuple[str, str]:
    """The paths of dcmtk's ``storescu`` and ``storescp``; BenchError naming the fix if absent."""
    found = {name: shutil.which(name) for name in ("storescu", "storescp")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise BenchError(
            f"bench --stage gateway needs dcmtk's {' and '.join(missing)} on PATH "
            "(Debian/Ubuntu: apt-get install dcmtk)"
        )
    return str(found["storescu"]), str(found["storescp"])


def write_slices(folder: Path, instances: int, size: int = 512) -> int:
    """``instances`` CT slices as ``folder/NNNNN.dcm``; returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    slices = [ct_slice(seed, size) for seed in range(min(instances, _DISTINCT))]
    written = 0
    for i in range(instances):
        data = encode_ct(slices[i % len(slices)], study="bench-gateway", instance=i + 1)
        (folder / f"{i:05d}.dcm").write_bytes(data)
        written += len(data)
    return written


def storescu(tool: str, port: int, folder: Path, ae_title: str) -> float:
    """Send every file of ``folder`` over one association; returns the wall seconds taken."""
    cmd = [tool, "-aec", ae_title, "+sd", _HOST, str(port), str(folder)]
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        env=_dcmtk_env(),
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-1500:]
        raise BenchError(f"storescu to port {port} exited with {done.returncode}: {tail}")
    return seconds


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BenchError(f"storescp exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((_HOST, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise BenchError(
                    f"storescp did not listen on port {port} within {timeout_s} s"
                ) from exc
            time.sleep(0.05)


@contextmanager
def storescp(tool: str, out: Path, ae_title: str, log_path: Path) -> Iterator[int]:
    """dcmtk's storescp writing to ``out`` on a free port (yielded), stopped after."""
    out.mkdir(parents=True, exist_ok=True)
    port = broker.free_port()
    cmd = [tool, "--output-directory", str(out), "--aetitle", ae_title, str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_dcmtk_env()
        )
        try:
            _wait_listening(port, proc)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def count_events(bootstrap: str, settings: Settings) -> tuple[int, int]:
    """(records, distinct SOP Instance UIDs) on the events topic, read from the beginning."""
    consumer = kafka_clients.consumer(bootstrap, settings, group_id=None)
    try:
        parts = consumer.partitions_for_topic(settings.events_topic) or {0}
        tps = [TopicPartition(settings.events_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        records, uids = 0, set()
        deadline = time.monotonic() + _TIMEOUT_S
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BenchError(f"read {records} of {sum(ends.values())} events back in time")
            for batch in consumer.poll(timeout_ms=500).values():
                for record in batch:
                    records += 1
                    uids.add(InstanceHeader.read(record.value).sop_uid)
        return records, len(uids)
    finally:
        consumer.close()


def _delete_topics(bootstrap: str, settings: Settings) -> None:
    topics = [settings.events_topic, settings.findings_topic, settings.alerts_topic]
    topics += [settings.dlq_topic, settings.studies_topic]
    with contextlib.suppress(Exception):  # best effort: the events are 100 MB nobody needs
        admin = kafka_clients.admin_client(bootstrap, settings)
        with contextlib.closing(admin):
            admin.delete_topics(topics)


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else 0.0


def bench_gateway(
    base: Settings, bootstrap: str, instances: int = DEFAULT_INSTANCES, size: int = 512
) -> dict[str, Any]:
    """Instances per second through the gateway and through storescp (see the module)."""
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    scu, scp = dcmtk_tools()
    run = f"bench.gateway-{uuid.uuid4().hex[:8]}"
    settings = base.namespaced(run).replace(
        bootstrap_servers=bootstrap, worker_id=run, gateway_port=0
    )
    kafka_clients.ensure_topics(bootstrap, settings, also=(settings.studies_topic,))
    ae_title = settings.gateway_ae_title
    with tempfile.TemporaryDirectory(prefix="scanstream-bench-gateway-") as tmp_name:
        tmp = Path(tmp_name)
        written = write_slices(tmp / "in", instances, size)
        try:
            gateway = Gateway(settings, bootstrap)
            try:
                port = gateway.start()
                # Producer metadata before the clock starts: start-up, not the per-instance cost.
                gateway.publisher.producer.partitions_for(settings.events_topic)
                gateway_s = storescu(scu, port, tmp / "in", ae_title)
            finally:
                gateway.stop()
            stored = gateway.scp.stored
            records, distinct = count_events(bootstrap, settings)
        finally:
            _delete_topics(bootstrap, settings)
        out = tmp / "out"
        with storescp(scp, out, ae_title, tmp / "storescp.log") as scp_port:
            storescp_s = storescu(scu, scp_port, tmp / "in", ae_title)
        files = sum(1 for p in out.iterdir() if p.is_file())
        log_tail = (tmp / "storescp.log").read_text(errors="replace")[-1000:]
    if stored != instances or records != instances or distinct != instances:
        raise BenchError(
            f"the gateway acknowledged {stored}, the topic holds {records} events "
            f"({distinct} distinct SOP Instance UIDs) of {instances} sent"
        )
    if files != instances:
        raise BenchError(f"storescp wrote {files} of {instances} instances: {log_tail}")
    gateway_per_s, storescp_per_s = _rate(instances, gateway_s), _rate(instances, storescp_s)
    return {
        "stage": "gateway",
        "instances": instances,
        "gateway_per_s": gateway_per_s,
        "storescp_per_s": storescp_per_s,
        "ratio": round(gateway_per_s / storescp_per_s, 3) if storescp_per_s else None,
        "gateway_s": round(gateway_s, 3),
        "storescp_s": round(storescp_s, 3),
        "gateway_stored": stored,
        "events_on_topic": records,
        "storescp_files": files,
        "instance_bytes": round(written / instances),
        "image_size": size,
        "dcmtk_tcp_nodelay": _dcmtk_env()["TCP_NODELAY"],
    }


@contextmanager
def _bootstrap(settings: Settings, tmp: Path) -> Iterator[tuple[str, str]]:
    """The configured broker, else a running local one, else one started for this run."""
    running = None if settings.bootstrap_servers else broker.status()
    if running is not None:
        yield running.bootstrap, f"local Apache Kafka (running, {running.bootstrap})"
        return
    from worker.bench.suite import _kafka  # suite imports this module lazily: no cycle

    with _kafka(settings, tmp) as (bootstrap, where, _):
        yield bootstrap, where


def run_gateway_stage(settings: Settings, instances: int = DEFAULT_INSTANCES) -> dict[str, Any]:
    """:func:`bench_gateway` against the broker a bench run uses; adds ``broker``."""
    dcmtk_tools()  # fail before starting a broker for nothing
    with (
        tempfile.TemporaryDirectory(prefix="scanstream-bench-") as tmp_name,
        _bootstrap(settings, Path(tmp_name)) as (bootstrap, where),
    ):
        return {**bench_gateway(settings, bootstrap, instances), "broker": where}
