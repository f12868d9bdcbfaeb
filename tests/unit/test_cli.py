"""The command line: fail fast with a message that says what to fix; models verify."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import worker

MODELS = Path(worker.__file__).parent / "models"


def scanstream(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_misconfiguration_fails_fast_naming_the_variable() -> None:
    proc = scanstream("run", SCANSTREAM_MAX_FRAMES="lots")
    assert proc.returncode == 2
    assert "SCANSTREAM_MAX_FRAMES='lots' is not an integer" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = scanstream(
        "run", SCANSTREAM_MODELS_DIR="/nonexistent/models", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9"
    )
    assert proc.returncode == 2 and "/nonexistent/models" in proc.stderr
    # Loaded in the compute process by default: its error, not the pool's traceback.
    assert "Traceback" not in proc.stderr and "initializer" not in proc.stderr


def test_a_broker_that_does_not_answer_fails_start_naming_address_and_cause() -> None:
    import time

    started = time.monotonic()
    proc = scanstream(
        "run", KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", SCANSTREAM_CONNECT_TIMEOUT_S="2"
    )
    assert proc.returncode == 2, proc.stderr
    assert "Kafka at 127.0.0.1:9 did not answer within 2 s" in proc.stderr
    assert "refused" in proc.stderr and "KAFKA_BOOTSTRAP_SERVERS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60  # model loading included; never a hang


def test_a_misspelt_variable_fails_start() -> None:
    proc = scanstream("run", SCANSTREAM_DELIVRY="exactly-once")
    assert proc.returncode == 2
    assert "unknown variable SCANSTREAM_DELIVRY; did you mean SCANSTREAM_DELIVERY?" in proc.stderr


def test_models_verify_passes_on_shipped_and_names_a_tampered_file(tmp_path: Path) -> None:
    ok = scanstream("models", "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("OK") >= 2
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    onnx_file = copy / "lesion-svm" / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    bad = scanstream("models", "verify", "--models-dir", str(copy))
    assert bad.returncode != 0
    assert str(onnx_file) in bad.stdout + bad.stderr
    listed = scanstream("models", "list")
    assert "lesion-cnn" in listed.stdout and "lesion-svm" in listed.stdout


def test_acls_worker_prints_exactly_the_worker_grants(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    from worker.cli import main
    from worker.runtime.acls import worker_grants
    from worker.settings import Settings

    for key in list(os.environ):
        if key.startswith("SCANSTREAM_") or key == "KAFKA_BOOTSTRAP_SERVERS":
            monkeypatch.delenv(key)
    monkeypatch.setenv("SCANSTREAM_DELIVERY", "exactly-once")
    monkeypatch.setenv("SCANSTREAM_CREATE_TOPICS", "false")
    monkeypatch.setenv("SCANSTREAM_GROUP_ID", "radiology")
    root, kafka_log = logging.getLogger(), logging.getLogger("kafka")
    saved = root.handlers[:], root.level, kafka_log.level
    try:  # main() sets up JSON logging on the root logger: put it back afterwards
        assert main(["acls", "worker", "--principal", "User:w"]) == 0
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        kafka_log.setLevel(saved[2])
    out = capsys.readouterr().out.splitlines()
    settings = Settings(delivery="exactly-once", create_topics=False, group_id="radiology")
    prefix = "kafka-acls.sh --bootstrap-server $KAFKA_BOOTSTRAP_SERVERS --add "
    assert out == [prefix + g.line("User:w") for g in worker_grants(settings)]
    assert out == [
        prefix + "--allow-principal User:w --operation Read --topic scans.events",
        prefix + "--allow-principal User:w --operation Read --group radiology",
        prefix + "--allow-principal User:w --operation Write --topic scans.findings",
        prefix + "--allow-principal User:w --operation Write --topic scans.alerts",
        prefix + "--allow-principal User:w --operation Write --topic scans.dlq",
        prefix + "--allow-principal User:w --operation Write --transactional-id "
        "scanstream-radiology- --resource-pattern-type prefixed",
    ]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({}, "SCANSTREAM_SR_TOPIC"),
        ({"SCANSTREAM_SR_TOPIC": "scans.sr"}, "SCANSTREAM_EXPORT_TO"),
        (
            {"SCANSTREAM_SR_TOPIC": "scans.sr", "SCANSTREAM_EXPORT_TO": "ftp://pacs/"},
            "SCANSTREAM_EXPORT_TO",
        ),
        (
            {
                "SCANSTREAM_SR_TOPIC": "scans.sr",
                "SCANSTREAM_EXPORT_TO": "dicom://PACS@h:104",
                "SCANSTREAM_EXPORT_AUTH": "basic u:p",
            },
            "SCANSTREAM_EXPORT_AUTH",
        ),
    ],
)
def test_export_fails_fast_naming_what_to_set(env: dict[str, str], names: str) -> None:
    """Before any broker is looked for: nothing here runs one."""
    clean = {k: "" for k in os.environ if k.startswith("SCANSTREAM_")}
    proc = scanstream("export", **clean, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", **env)
    assert proc.returncode == 2, proc.stderr
    assert names in proc.stderr and "Traceback" not in proc.stderr
    assert "u:p" not in proc.stderr


def test_acls_export_names_the_sr_topic_its_group_and_the_dead_letters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.runtime.acls import Grant, export_grants
    from worker.settings import Settings

    settings = Settings(
        sr_topic="scans.sr", export_to="dicom://PACS@10.0.0.5:104", create_topics=False
    )
    assert export_grants(settings) == [
        Grant("topic", "scans.sr", "Read"),
        Grant("group", "scanstream-export-dicom-PACS-10.0.0.5-104", "Read"),
        Grant("topic", "scans.dlq", "Write"),
    ]


def test_bench_offers_exactly_the_load_generators_and_defaults_to_librdkafka() -> None:
    from worker.bench.loadgen import DEFAULT_GENERATOR, GENERATORS
    from worker.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench"]).generator == DEFAULT_GENERATOR
    for generator in GENERATORS:
        assert parser.parse_args(["bench", "--generator", generator]).generator == generator
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--generator", "rdkafka"])
