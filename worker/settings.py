"""One frozen settings object, read from the environment and CLI overrides in one place.

Every knob is an environment variable ``SCANSTREAM_<FIELD>`` (upper case), except the broker
address, which also honours the conventional ``KAFKA_BOOTSTRAP_SERVERS``. CLI flags override the
environment. Values are checked here, so that a misconfiguration fails at start with a message
that names the variable and says what to fix. Secrets are wrapped in :class:`Secret` and never
printed.

>>> s = Settings.from_env({"SCANSTREAM_GROUP_ID": "g1", "KAFKA_BOOTSTRAP_SERVERS": "h:9092"})
>>> s.group_id, s.bootstrap_servers
('g1', 'h:9092')
>>> Settings.from_env({"SCANSTREAM_MAX_FRAMES": "zero"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
worker.errors.ConfigError: SCANSTREAM_MAX_FRAMES='zero' is not an integer; set it to a whole ...
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from worker.errors import ConfigError

DeliveryMode = Literal["at-least-once", "exactly-once"]
DELIVERY_MODES: Final = ("at-least-once", "exactly-once")
MiB: Final = 1024 * 1024


class Secret:
    """A string that never shows itself in repr, str or logs.

    >>> Secret("hunter2")
    Secret('***')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class AlertRule:
    """Alert when ``label``'s probability is at or above ``threshold`` (optionally one modality).

    Parsed from ``label>=threshold[@MODALITY][:severity]``, comma separated in
    ``SCANSTREAM_ALERT_RULES``.

    >>> AlertRule.parse("lesion>=0.9@CT:critical")
    AlertRule(label='lesion', threshold=0.9, modality='CT', severity='critical')
    """

    label: str
    threshold: float
    modality: str | None = None
    severity: str = "high"

    @classmethod
    def parse(cls, text: str) -> AlertRule:
        spec, _, severity = text.strip().partition(":")
        cond, _, modality = spec.partition("@")
        label, sep, threshold = cond.partition(">=")
        if not sep or not label.strip():
            raise ConfigError(
                f"alert rule {text!r} is not of the form label>=threshold[@MODALITY][:severity],"
                " e.g. lesion>=0.9@CT:critical"
            )
        try:
            value = float(threshold)
        except ValueError as exc:
            raise ConfigError(
                f"alert rule {text!r}: threshold {threshold!r} is not a number"
            ) from exc
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"alert rule {text!r}: threshold must lie in [0, 1]")
        sev = severity.strip() or "high"
        if sev not in ("low", "medium", "high", "critical"):
            raise ConfigError(
                f"alert rule {text!r}: severity must be low, medium, high or critical"
            )
        return cls(label.strip(), value, modality.strip().upper() or None, sev)


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    """Everything the worker can be told. Defaults suit the embedded local broker."""

    # None means: use (and start if needed) the embedded local broker.
    bootstrap_servers: str | None = None
    events_topic: str = "scans.events"
    findings_topic: str = "scans.findings"
    alerts_topic: str = "scans.alerts"
    dlq_topic: str = "scans.dlq"
    group_id: str = "scanstream"
    worker_id: str = field(default_factory=_default_worker_id)
    delivery: DeliveryMode = "at-least-once"
    # Limits: beyond them an event is dead-lettered as too_large.
    max_message_bytes: int = 16 * MiB
    max_pixels: int = 64 * MiB
    max_frames: int = 2000
    # Inference runs over every frame of one poll at once, in chunks of at most this many.
    batch_max_size: int = 16
    # A poll's events are computed and delivered in chunks of about this much compute, so that
    # a finding leaves when its chunk is done, not when the whole poll is (0: one chunk a poll).
    # Each chunk costs a produce round trip and a commit in kafka-python's Python code: at 20 ms
    # (two 512x512 slices) that capped saturation at 0.8x of what 60 ms gives; longer targets
    # gained little more (README, benchmarks). Under load below saturation a poll brings one or
    # two events, so the target only matters for a backlog.
    chunk_target_ms: float = 60.0
    # Offsets of acknowledged results are committed at most this often (asynchronously), and at
    # once when a poll brings nothing (0: after every chunk). A commit costs the loop's thread
    # kafka-python's hand-offs to its network thread; at half load, where a chunk is one or two
    # events, committing each one made the median latency longer in 27 of 31 interleaved rounds
    # (by 5.7 ms in the median pair; README, benchmarks). A crash, or a partition that moves to
    # another member, replays at most this much more (at-least-once: a replay repeats findings
    # under the same finding ids).
    commit_interval_ms: float = 100.0
    poll_timeout_ms: int = 100
    max_poll_records: int = 64
    max_poll_interval_ms: int = 300_000
    fetch_attempts: int = 3
    fetch_timeout_s: float = 10.0  # whole-request deadline of one fetch attempt
    # No record may take longer than this: past it, the event is a dead letter (timeout).
    event_timeout_s: float = 60.0
    # Start fails if the broker does not answer within this time (address and cause named).
    connect_timeout_s: float = 30.0
    # /healthz turns 503 when no offset was committed for this long while records wait.
    stall_timeout_s: float = 120.0
    grace_period_s: float = 30.0
    metrics_port: int = 0  # 0: no HTTP server
    metrics_host: str = "127.0.0.1"
    require_gpu: bool = False
    models_dir: str | None = None  # None: the models shipped in the package
    pseudonym_key: Secret = field(default_factory=lambda: Secret(""))
    # The shipped models were trained on CT only: by default, alert on CT findings alone.
    alert_rules: tuple[AlertRule, ...] = (AlertRule("lesion", 0.9, "CT", "high"),)
    thumbnail_dir: str | None = None
    log_level: str = "INFO"
    # glibc malloc keeps blocks up to 32 MiB on the heap, for reuse (worker/runtime/allocator.py)
    malloc_tune: bool = True
    # Compute in a child process, past the GIL of Kafka's threads, where a native crash or hang
    # costs one event, not the worker (runtime/compute_process.py). False: in this process.
    compute_process: bool = True
    # Reference events: URI prefixes the worker may read (comma separated in the environment).
    # Empty: every reference event is refused (reference_refused). See worker/references.py.
    reference_allow: tuple[str, ...] = ()
    # Sent to allowed http(s) prefixes only: "basic USER:PASSWORD" or "bearer TOKEN".
    reference_auth: Secret = field(default_factory=lambda: Secret(""))
    # Kafka security, for every client the project makes (worker/runtime/kafka.py).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: Secret = field(default_factory=lambda: Secret(""))
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True
    # False where the worker may not create topics: then missing topics fail start.
    create_topics: bool = True
    # Of the topics the worker creates; 1 suits the single local broker, production wants 3/2.
    topic_replication_factor: int = 1
    topic_min_insync_replicas: int = 1
    # The gateway (`scanstream gateway`): DICOM in by C-STORE and STOW-RS, events out.
    gateway_ae_title: str = "SCANSTREAM"
    gateway_host: str = "127.0.0.1"  # 0.0.0.0 to take associations from other hosts
    gateway_port: int = 11112
    # Calling peers allowed: "AET", "@address" or "AET@address", comma separated; empty: any.
    gateway_allowed_callers: tuple[str, ...] = ()
    gateway_max_associations: int = 10
    # Instances up to this size go inline; larger ones through the claim-check folder.
    gateway_inline_max_bytes: int = 4 * MiB
    claim_check_dir: str | None = None
    # A C-STORE is answered Success only once the broker acknowledged it, within this time.
    gateway_ack_timeout_s: float = 10.0
    # A study without new instances for this long is announced complete on studies_topic.
    study_quiet_s: float = 10.0
    studies_topic: str = "scans.studies"
    gateway_http_port: int = 0  # STOW-RS receiver; 0: off
    gateway_http_auth: Secret = field(default_factory=lambda: Secret(""))
    # DICOM SR results (worker/sr.py): when set, the worker also produces each finding's SR
    # (Part 10 bytes) to this topic, as sensitive as the events topic. None: off.
    sr_topic: str | None = None
    # `scanstream export`: where the SRs go, dicom://AET@host:port (C-STORE) or
    # http(s)://host[:port]/path/dicom-web (STOW-RS, Authorization from export_auth).
    export_to: str | None = None
    export_auth: Secret = field(default_factory=lambda: Secret(""))  # as reference_auth
    export_calling_ae_title: str = "SCANSTREAM"
    export_group_id: str | None = None  # None: one group per destination (worker/export)
    export_timeout_s: float = 30.0  # one send: association or request, answer included
    # Sends of one record the destination answered with a temporary failure; then dead letter.
    export_max_attempts: int = 5
    export_backoff_max_s: float = 30.0
    # `scanstream summarize`: one series-summary record per series, when the gateway announces
    # its study complete or, without one, after this long without a new finding of the series.
    series_topic: str = "scans.series"
    series_quiet_s: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "max_message_bytes",
            "max_pixels",
            "max_frames",
            "batch_max_size",
            "max_poll_records",
            "fetch_attempts",
            "max_poll_interval_ms",
            "topic_replication_factor",
            "topic_min_insync_replicas",
            "gateway_max_associations",
            "gateway_inline_max_bytes",
            "export_max_attempts",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"SCANSTREAM_{name.upper()} must be at least 1")
        for name in (
            "grace_period_s",
            "fetch_timeout_s",
            "event_timeout_s",
            "connect_timeout_s",
            "stall_timeout_s",
            "gateway_ack_timeout_s",
            "study_quiet_s",
            "export_timeout_s",
            "export_backoff_max_s",
            "series_quiet_s",
        ):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(f"SCANSTREAM_{name.upper()} must be a number of seconds > 0")
        if not self.chunk_target_ms >= 0:  # also refuses NaN
            raise ConfigError("SCANSTREAM_CHUNK_TARGET_MS must be a number of milliseconds >= 0")
        if not self.commit_interval_ms >= 0:  # also refuses NaN
            raise ConfigError("SCANSTREAM_COMMIT_INTERVAL_MS must be a number of milliseconds >= 0")
        if self.delivery not in DELIVERY_MODES:
            raise ConfigError(
                f"SCANSTREAM_DELIVERY={self.delivery!r}: use one of {', '.join(DELIVERY_MODES)}"
            )
        for name in ("metrics_port", "gateway_port", "gateway_http_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"SCANSTREAM_{name.upper()} must be a TCP port (0: off)")
        if not 1 <= len(self.gateway_ae_title) <= 16 or not self.gateway_ae_title.isascii():
            raise ConfigError("SCANSTREAM_GATEWAY_AE_TITLE must be 1 to 16 ASCII characters")
        topics = [
            self.events_topic,
            self.findings_topic,
            self.alerts_topic,
            self.dlq_topic,
            self.studies_topic,
            self.series_topic,
            *([self.sr_topic] if self.sr_topic else []),
        ]
        if len(set(topics)) != len(topics):
            raise ConfigError(
                "the events, findings, alerts, dead-letter, studies, series and SR topics must "
                "differ"
            )
        if not 1 <= len(self.export_calling_ae_title) <= 16:
            raise ConfigError("SCANSTREAM_EXPORT_CALLING_AE_TITLE must be 1 to 16 characters")
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ConfigError(
                "SCANSTREAM_TOPIC_MIN_INSYNC_REPLICAS must not exceed "
                "SCANSTREAM_TOPIC_REPLICATION_FACTOR (production: 3 replicas, 2 in sync)"
            )
        from worker.settings_security import check_security

        check_security(self)
        # Imported here: worker.references imports Secret from this module.
        from worker.references import ReferencePolicy

        ReferencePolicy.from_settings(self)  # ConfigError for a bad prefix or auth value
        from worker.references import authorization_value

        export_auth = authorization_value(self.export_auth.reveal(), "SCANSTREAM_EXPORT_AUTH")
        if self.export_to:
            from worker.export.destinations import parse_destination

            kind = parse_destination(self.export_to).kind  # ConfigError naming the variable
            if kind == "dicom" and export_auth:
                raise ConfigError(
                    "SCANSTREAM_EXPORT_AUTH is for http(s) destinations; C-STORE has none: unset it"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``) and explicit overrides."""
        env = os.environ if env is None else env
        _refuse_unknown(env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"SCANSTREAM_{f.name.upper()}"
            raw = env.get(key)
            if f.name == "bootstrap_servers" and raw is None:
                raw = env.get("KAFKA_BOOTSTRAP_SERVERS")
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, key, raw, f.type)
        for name in FILE_SECRETS:
            from_file = _read_secret_file(env, name)
            if from_file is not None:
                values[name] = from_file
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in FILE_SECRETS:
            if isinstance(values.get(name), str):
                values[name] = Secret(values[name])
        for name in ("reference_allow", "gateway_allowed_callers"):
            if isinstance(values.get(name), str):
                values[name] = _split(values[name])
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def namespaced(self, prefix: str) -> Settings:
        """These settings with topics and a consumer group of their own, named after ``prefix``
        (test runs and benchmark phases that must never see each other's events).

        >>> Settings().namespaced("t1").findings_topic
        't1.findings'
        """
        return self.replace(
            events_topic=f"{prefix}.events",
            findings_topic=f"{prefix}.findings",
            alerts_topic=f"{prefix}.alerts",
            dlq_topic=f"{prefix}.dlq",
            studies_topic=f"{prefix}.studies",
            sr_topic=f"{prefix}.sr" if self.sr_topic else None,
            series_topic=f"{prefix}.series",
            group_id=prefix,
        )

    def describe(self) -> dict[str, Any]:
        """The settings as a dict that is safe to log (secrets masked)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "***" if value else ""
            elif f.name == "alert_rules":
                value = [dataclasses.asdict(r) for r in value]
            out[f.name] = value
        return out


# Secrets that may come from a file instead (Kubernetes mounts secrets as files): the variable
# SCANSTREAM_<FIELD>_FILE names the file, whose content (one trailing newline dropped) is used.
FILE_SECRETS: Final = (
    "reference_auth",
    "sasl_password",
    "gateway_http_auth",
    "export_auth",
    "pseudonym_key",
)

# SCANSTREAM_* variables that are not settings fields but belong to the project: where the local
# broker keeps its state and jars (worker/broker.py), and the _FILE variants above.
OTHER_VARIABLES: Final = (
    "SCANSTREAM_BROKER_DIR",
    "SCANSTREAM_CACHE",
    "SCANSTREAM_BENCH_NOISE_HU",  # worker/bench/suite.py: the benchmark's CT noise level
    "SCANSTREAM_BROKER_FETCH",  # worker/broker.py: how the broker's jars are fetched (direct|maven)
    *(f"SCANSTREAM_{name.upper()}_FILE" for name in FILE_SECRETS),
)


def known_variables() -> tuple[str, ...]:
    """Every ``SCANSTREAM_*`` variable the project reads."""
    return (*(f"SCANSTREAM_{f.name.upper()}" for f in fields(Settings)), *OTHER_VARIABLES)


def _refuse_unknown(env: Mapping[str, str]) -> None:
    """A misspelt variable would be silently ignored; fail and name the closest known one.

    >>> _refuse_unknown({"SCANSTREAM_DELIVRY": "exactly-once"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    worker.errors.ConfigError: unknown variable SCANSTREAM_DELIVRY; did you mean SCANSTREAM_DELI...
    """
    known = known_variables()
    for key in sorted(env):
        if key.startswith("SCANSTREAM_") and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see the README's configuration table"
            raise ConfigError(f"unknown variable {key}; {hint}")


def _read_secret_file(env: Mapping[str, str], name: str) -> Secret | None:
    key = f"SCANSTREAM_{name.upper()}"
    path = env.get(f"{key}_FILE")
    if not path:
        return None
    if env.get(key):
        raise ConfigError(f"set {key} or {key}_FILE, not both")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            f"{key}_FILE={path!r} cannot be read ({type(exc).__name__}); point it at the file "
            "that holds the secret"
        ) from exc
    text = text[:-1] if text.endswith("\n") else text
    if not text:
        raise ConfigError(f"{key}_FILE={path!r} is empty")
    return Secret(text)


def _split(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse(name: str, key: str, raw: str, annotation: Any) -> Any:
    text = str(annotation)
    if name == "alert_rules":
        return tuple(AlertRule.parse(part) for part in raw.split(",") if part.strip())
    if name in FILE_SECRETS:
        return Secret(raw)
    if name in ("reference_allow", "gateway_allowed_callers"):
        return _split(raw)
    if text == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={raw!r} is not a boolean; use true or false")
    if text == "int":
        try:
            return int(raw)
        except ValueError as exc:
            example = getattr(Settings, name, 1)
            raise ConfigError(
                f"{key}={raw!r} is not an integer; set it to a whole number such as {example}"
            ) from exc
    if text == "float":
        try:
            number = float(raw)
        except ValueError as exc:
            raise ConfigError(f"{key}={raw!r} is not a number") from exc
        if not math.isfinite(number):
            raise ConfigError(f"{key}={raw!r} is not a finite number")
        return number
    return raw
