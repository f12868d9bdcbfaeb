"""Start-up and supervision of the worker: fail fast, then run one or N consumer processes."""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from kafka import errors as kafka_errors

from worker import __version__
from worker.errors import BrokerError, ModelError
from worker.inference import ModelSet
from worker.metrics import Health, Metrics, serve
from worker.runtime import allocator
from worker.runtime import kafka as kafka_clients
from worker.runtime.acls import check_access, transactional_prefix
from worker.runtime.compute_process import ProcessPipeline
from worker.runtime.loop import Worker
from worker.runtime.observer import RunStats
from worker.settings import Settings

log = logging.getLogger(__name__)


def load_models(settings: Settings) -> ModelSet:
    models = ModelSet.load(
        Path(settings.models_dir) if settings.models_dir else None,
        settings.require_gpu,
        max_batch=settings.batch_max_size,
    )
    log.info(
        "models loaded",
        extra={"fields": {"models": models.model_infos(), "execution_provider": models.provider}},
    )
    return models


def start_worker(
    settings: Settings,
    bootstrap: str,
    models: ModelSet | None = None,
    pipeline: ProcessPipeline | None = None,
    **consumer_config: Any,
) -> tuple[Worker, Metrics, Health]:
    """Everything that can fail at start fails here, before the first poll.

    With ``compute_process``, the models live in the child alone (``pipeline``, started here
    unless given), never in this process. ``consumer_config`` overrides the consumer's defaults
    (:func:`worker.runtime.kafka.consumer`).
    """
    if settings.compute_process and models is None:
        pipeline = pipeline or ProcessPipeline(settings)
        infos = pipeline.model_infos()
    else:
        models = models or load_models(settings)
        infos = models.model_infos()
    try:
        return _start(settings, bootstrap, models, pipeline, infos, consumer_config)
    except BaseException:
        if pipeline is not None:
            pipeline.close()
        raise


def _start(
    settings: Settings,
    bootstrap: str,
    models: ModelSet | None,
    pipeline: ProcessPipeline | None,
    infos: list[dict[str, str]],
    consumer_config: dict[str, Any],
) -> tuple[Worker, Metrics, Health]:
    metrics, health = Metrics(), Health(stall_timeout_s=settings.stall_timeout_s)
    metrics.set_gpu_required(settings.require_gpu)
    for info in infos:
        metrics.set_model_info(info["name"], info["version"], info["execution_provider"])
    metrics.declare_models([info["name"] for info in infos])
    admin = kafka_clients.admin_client(bootstrap, settings)
    try:
        check_access(admin, settings)
    finally:
        admin.close()

    def make_consumer() -> Any:
        return kafka_clients.consumer(
            bootstrap, settings, isolation_level="read_committed", **consumer_config
        )

    try:
        worker = Worker(
            settings,
            bootstrap,
            models,
            metrics,
            health,
            pipeline=pipeline,
            consumer_factory=make_consumer,
        )
    except kafka_errors.TransactionalIdAuthorizationFailedError as exc:
        raise BrokerError(
            "this Kafka principal lacks ACLs the worker needs: Write on transactional-id prefix "
            f"{transactional_prefix(settings)} (exactly-once delivery; see the README's ACL "
            "guide, or `scanstream acls`)"
        ) from exc
    return worker, metrics, health


def run_worker(
    settings: Settings, drain: bool = False, processes: int = 1, max_events: int | None = None
) -> int:
    allocator.tune(settings.malloc_tune)  # before the first image-sized buffer
    # Local misconfiguration (models, GPU) fails before anything touches the network; with a
    # compute process, the models are loaded there alone (each of N processes starts its own).
    models: ModelSet | None = None
    pipeline: ProcessPipeline | None = None
    if settings.compute_process and processes == 1:
        pipeline = ProcessPipeline(settings)
    else:
        models = load_models(settings)
    try:
        bootstrap, _ = kafka_clients.resolve_bootstrap(settings, start_local=True)
        kafka_clients.wait_for_broker(bootstrap, settings)
        kafka_clients.ensure_topics(bootstrap, settings)
        if processes > 1:
            return _run_many(settings.replace(bootstrap_servers=bootstrap), drain, processes)
        worker, metrics, health = start_worker(settings, bootstrap, models, pipeline)
    except BaseException:
        if pipeline is not None:
            pipeline.close()  # no child left behind by a start that failed
        raise
    server = None
    if settings.metrics_port:
        server = serve(metrics, health, settings.metrics_host, settings.metrics_port)
    worker.install_signal_handlers()
    # Everything alive now (modules, models, clients) lives as long as the process: keep it out
    # of the cyclic collector's full passes, which otherwise show up as latency spikes.
    gc.collect()
    gc.freeze()
    log.info(
        "worker started",
        extra={
            "fields": {
                "version": __version__,
                "bootstrap": bootstrap,
                "group": settings.group_id,
                "worker_id": settings.worker_id,
                "delivery": settings.delivery,
            }
        },
    )
    try:
        stats = worker.run(drain=drain, max_events=max_events)
    finally:
        if server is not None:
            server.close()
    _report(stats)
    return 0


def _report(stats: RunStats) -> None:
    log.info(
        "worker stopped",
        extra={
            "fields": {
                "consumed": stats.consumed,
                "findings": stats.findings,
                "dead_letters": stats.dead_letters,
                "alerts": stats.alerts,
                "by_reason": stats.by_reason,
            }
        },
    )


def _child(settings: Settings, drain: bool) -> None:
    from worker.runtime import jsonlog

    jsonlog.setup(settings.log_level)
    sys.exit(run_worker(settings, drain=drain))


def _run_many(settings: Settings, drain: bool, processes: int) -> int:
    """N consumer processes in one group; SIGTERM to the parent drains them all."""
    ctx = mp.get_context("spawn")  # no inherited Kafka sockets or ONNX sessions
    children = [
        ctx.Process(
            target=_child,
            args=(settings.replace(worker_id=f"{settings.worker_id}-{i}"), drain),
            daemon=False,
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                child.terminate()  # SIGTERM: each child drains and leaves the group

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    codes = [child.exitcode for child in children]
    return 0 if all(c == 0 for c in codes) else 1


__all__ = ["ModelError", "run_worker", "start_worker"]
