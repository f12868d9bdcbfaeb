"""The ``scanstream`` command: run, publish, analyze, demo, report, broker, models, train, bench.

Every subcommand reads its settings once (environment ``SCANSTREAM_*``/``KAFKA_BOOTSTRAP_SERVERS``
plus the flags given here) and fails fast, with exit code 2 and one line that says what to fix,
on a misconfiguration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.errors import BrokerError, ConfigError, ModelError, ScanStreamError
from worker.settings import Settings

log = logging.getLogger("scanstream")


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in (
        "bootstrap_servers",
        "group_id",
        "delivery",
        "metrics_port",
        "models_dir",
        "require_gpu",
        "batch_max_size",
    ):
        value = getattr(args, name, None)
        if value is not None and value is not False:
            overrides[name] = value
    return Settings.from_env(**overrides)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_broker(args: argparse.Namespace) -> int:
    from worker import broker

    if args.action == "fetch":
        print(broker.fetch_jars())
    elif args.action == "start":
        info, started = broker.start(secure=args.secure)
        verb = "started" if started else "already running"
        kind = " secured (SASL_SSL, SCRAM-SHA-512, ACLs)" if info.secure else ""
        print(f"Kafka {info.version}{kind} {verb} (pid {info.pid}); bootstrap: {info.bootstrap}")
        setup = broker.secure_setup(info)
        if setup is None:
            print(f"export KAFKA_BOOTSTRAP_SERVERS={info.bootstrap}")
        else:
            # The client user's environment (its password too: a throwaway broker for trying).
            for key, value in setup.client_env(info.bootstrap).items():
                print(f"export {key}={value}")
    elif args.action == "stop":
        stopped = broker.stop()
        print(f"stopped the broker (pid {stopped.pid})" if stopped else "no broker was running")
    else:
        running = broker.status()
        if running is None:
            print("not running")
            return 3
        print(f"running (pid {running.pid}); bootstrap: {running.bootstrap}")
    return 0


def cmd_acls(args: argparse.Namespace) -> int:
    """Print the ``kafka-acls.sh`` arguments of one role, for these settings."""
    from worker.runtime import acls

    settings = _settings(args)
    roles = {
        "worker": acls.worker_grants,
        "publisher": acls.publisher_grants,
        "gateway": acls.gateway_grants,
        "reader": acls.reader_grants,
        "dead-letters": acls.dead_letter_grants,
        "export": acls.export_grants,
        "summarize": acls.summarize_grants,
    }
    for grant in roles[args.role](settings):
        line = grant.line(args.principal)
        print(f"kafka-acls.sh --bootstrap-server $KAFKA_BOOTSTRAP_SERVERS --add {line}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from worker.runtime.service import run_worker

    settings = _settings(args)
    return run_worker(
        settings, drain=args.drain, processes=args.processes, max_events=args.max_events
    )


def cmd_publish(args: argparse.Namespace) -> int:
    from worker.runtime import kafka as kafka_clients
    from worker.runtime.publisher import publish_files, reference_allow_line

    settings = _settings(args)
    bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=False)
    # Only the topic it writes: a publisher may not even Describe the worker's output topics.
    kafka_clients.ensure_topics(bootstrap, settings, only=(settings.events_topic,))
    sent = publish_files(args.paths, bootstrap, settings, reference=args.reference)
    print(f"published {len(sent)} event(s) to {settings.events_topic} at {bootstrap}")
    if args.reference and sent:  # the worker is another process: it must allow these folders
        print("the worker reads these claim checks only if it is started with:", file=sys.stderr)
        print(reference_allow_line(p.path for p in sent), file=sys.stderr)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from worker.contract import ScanEvent
    from worker.inference import ModelSet
    from worker.pipeline import Pipeline, offline_report
    from worker.runtime.publisher import iter_files

    settings = _settings(args)
    models = ModelSet.load(
        Path(settings.models_dir) if settings.models_dir else None,
        settings.require_gpu,
        max_batch=settings.batch_max_size,
    )
    pipeline = Pipeline(models, settings)
    status = 0
    for path in iter_files(args.paths):
        try:
            data = path.read_bytes()
        except OSError as exc:
            print(json.dumps({"error": "unreadable", "detail": str(exc), "path": str(path)}))
            status = 1
            continue
        [outcome] = pipeline.process([ScanEvent(str(path), path.stat().st_mtime, data=data)])
        if outcome.rejection is not None:
            reason, detail = outcome.rejection.reason, outcome.rejection.detail
            print(json.dumps({"rejected": reason, "detail": detail, "path": str(path)}))
        else:
            assert outcome.finding is not None
            print(json.dumps(offline_report(outcome.finding)))
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(_settings(args), timeout_s=args.timeout, report=args.report)


def cmd_report(args: argparse.Namespace) -> int:
    from worker.report.topic import run_report

    print(f"report: {run_report(_settings(args), args.last, args.out)}")
    return 0


def cmd_gateway(args: argparse.Namespace) -> int:
    from worker.gateway.service import run_gateway

    settings = _settings(args)
    if args.port is not None:
        settings = settings.replace(gateway_port=args.port)
    return run_gateway(settings)


def cmd_export(args: argparse.Namespace) -> int:
    from worker.export.service import run_export

    settings = _settings(args)
    if args.to is not None:
        settings = settings.replace(export_to=args.to)
    return run_export(settings, drain=args.drain)


def cmd_summarize(args: argparse.Namespace) -> int:
    from worker.series.service import run_summarize

    settings = _settings(args)
    if args.quiet is not None:
        settings = settings.replace(series_quiet_s=args.quiet)
    return run_summarize(settings)


def cmd_models(args: argparse.Namespace) -> int:
    from worker.inference import list_models, verify_models

    models_dir = Path(args.models_dir) if args.models_dir else None
    if args.action == "list":
        for card in list_models(models_dir):
            print(f"{card.name}\t{card.version}\t{card.task}\t{card.path}")
        return 0
    results = verify_models(models_dir)
    for path, ok, message in results:
        print(f"{'OK  ' if ok else 'FAIL'} {path}: {message}")
    return 0 if results and all(ok for _, ok, _ in results) else 1


def cmd_train(args: argparse.Namespace) -> int:
    from worker.training import train_all

    evaluation = train_all(Path(args.out), seed=args.seed)
    print(json.dumps(evaluation, indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from worker.bench.suite import run_bench

    result = run_bench(
        args.stage, Path(args.results), instances=args.instances, generator=args.generator
    )
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scanstream", description=__doc__)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    def kafka_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--bootstrap-servers",
            dest="bootstrap_servers",
            help="Kafka address (default: $KAFKA_BOOTSTRAP_SERVERS or the local broker)",
        )
        p.add_argument("--group-id", dest="group_id")

    p = sub.add_parser("run", help="consume scan events and publish findings")
    kafka_flags(p)
    p.add_argument("--drain", action="store_true", help="exit once caught up (burst mode)")
    p.add_argument("--processes", type=int, default=1, help="consumer processes in this group")
    p.add_argument("--max-events", type=int, default=None)
    p.add_argument("--delivery", choices=["at-least-once", "exactly-once"])
    p.add_argument("--metrics-port", type=int, dest="metrics_port")
    p.add_argument("--require-gpu", action="store_true", dest="require_gpu")
    p.add_argument("--models-dir", dest="models_dir")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("publish", help="publish DICOM files or folders as scan events")
    kafka_flags(p)
    p.add_argument("paths", nargs="+")
    p.add_argument("--reference", action="store_true", help="send file:// claim-check events")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("analyze", help="run the pipeline offline, one JSON line per file")
    p.add_argument("paths", nargs="+")
    p.add_argument("--models-dir", dest="models_dir")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("gateway", help="C-STORE (and STOW-RS) in, one durable scan event each")
    kafka_flags(p)
    p.add_argument("--port", type=int, help="C-STORE port (default SCANSTREAM_GATEWAY_PORT)")
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("export", help="send the SRs of SCANSTREAM_SR_TOPIC to a PACS")
    kafka_flags(p)
    p.add_argument("--to", help="dicom://AET@host:port or http(s)://host/dicom-web")
    p.add_argument("--metrics-port", type=int, dest="metrics_port")
    p.add_argument("--drain", action="store_true", help="exit once every SR was sent")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("summarize", help="one series-summary record per series of the findings")
    kafka_flags(p)
    p.add_argument(
        "--quiet", type=float, help="seconds without a finding that end a series (default 30)"
    )
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("demo", help="local broker + worker + pydicom samples, end to end")
    kafka_flags(p)
    p.add_argument("--timeout", type=float, default=150.0)
    p.add_argument("--report", default="results/demo.html", help="where the HTML page goes")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("report", help="the last findings of the findings topic as an HTML page")
    kafka_flags(p)
    p.add_argument("--last", type=_positive_int, default=50, help="how many findings (default 50)")
    p.add_argument("--out", default="results/report.html", help="where the page goes")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("broker", help="the local Apache Kafka (KRaft) for development and tests")
    p.add_argument("action", choices=["start", "stop", "status", "fetch"])
    p.add_argument(
        "--secure",
        action="store_true",
        help="start: a SASL_SSL listener with a CA made for the run, SCRAM users and ACLs",
    )
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("acls", help="print the Kafka ACLs a role needs with these settings")
    roles = ["worker", "gateway", "publisher", "reader", "dead-letters", "export", "summarize"]
    p.add_argument("role", choices=roles)
    p.add_argument("--principal", default="User:scanstream")
    p.set_defaults(func=cmd_acls)

    p = sub.add_parser("models", help="list or verify the ONNX models and their cards")
    p.add_argument("action", choices=["list", "verify"])
    p.add_argument("--models-dir", dest="models_dir")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("train", help="retrain the shipped demonstration models")
    p.add_argument("--out", default="build/models")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench", help="the benchmark suite")
    p.add_argument(
        "--stage",
        choices=["all", "imaging", "inference", "e2e", "gateway", "scaling"],
        default="all",
    )
    p.add_argument("--results", default="results")
    p.add_argument(
        "--instances",
        type=_positive_int,
        default=None,
        help="--stage gateway: 512x512 CT slices sent by C-STORE (default 200)",
    )
    p.add_argument(
        "--generator",
        choices=["librdkafka", "kafka-python"],
        default="librdkafka",
        help="the Kafka client that publishes the events and reads the findings back "
        "(default librdkafka: its CPU competes least with the worker under test)",
    )
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from worker.runtime import allocator, jsonlog

    try:
        env_settings = Settings.from_env()
        jsonlog.setup(args.log_level or env_settings.log_level)
        allocator.tune(env_settings.malloc_tune)  # every command here handles images
        code: int = args.func(args)
        return code
    except (ConfigError, BrokerError, ModelError) as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 2
    except ScanStreamError as exc:
        print(f"scanstream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
