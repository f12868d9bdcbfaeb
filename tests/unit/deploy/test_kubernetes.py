"""deploy/kubernetes: the base and every overlay render with ``kubectl kustomize`` and pass offline
checks: built-in kinds against Kubernetes' schemas (strict), KEDA's objects against KEDA's
documented fields, every variable known to worker.settings and accepted by it, hardened pods,
objects that fit together. The second half feeds broken copies to the same checks and sees each
break reported. No cluster, no network: a few seconds."""

from __future__ import annotations

from typing import Any

import pytest
from k8s_checks import (
    EXPORT,
    GATEWAY,
    README,
    WORKER,
    container_env,
    env_errors,
    find,
    keda_errors,
    kubectl,
    mutated,
    pod_errors,
    render,
    schema_errors,
    secret_keys,
    settings_errors,
    shared_config,
    targets,
    the,
    wiring_errors,
)

TARGETS = targets()
KINDS = {
    "ConfigMap",
    "Service",
    "Deployment",
    "PodDisruptionBudget",
    "ScaledObject",
    "TriggerAuthentication",
}


def worker_container(objs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = the(objs, "Deployment", WORKER)["spec"]["template"]["spec"][
        "containers"
    ][0]
    return container


# --- the manifests as they are -------------------------------------------------------------------
def test_kubectl_is_found_and_the_issue_overlays_exist() -> None:
    assert kubectl()
    assert {"base", "overlays/gpu", "overlays/secure"} <= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_renders_only_known_kinds_and_no_secret(target: str) -> None:
    objs = render(target)
    kinds = {o["kind"] for o in objs}
    assert kinds <= KINDS, kinds - KINDS
    assert {"Deployment", "ScaledObject", "PodDisruptionBudget", "ConfigMap"} <= kinds
    # Secret values never live in the repository: the operator creates scanstream-secrets.
    assert not find(objs, "Secret")


@pytest.mark.parametrize("target", TARGETS)
def test_objects_match_their_schemas(target: str) -> None:
    assert [e for obj in render(target) for e in schema_errors(obj)] == []


@pytest.mark.parametrize("target", TARGETS)
def test_keda_objects_use_documented_fields_and_our_rules(target: str) -> None:
    objs = render(target)
    keda = [o for o in objs if o["apiVersion"].startswith("keda.sh/")]
    assert find(objs, "ScaledObject", WORKER)
    assert [e for obj in keda for e in keda_errors(obj)] == []
    scaled = the(objs, "ScaledObject", WORKER)["spec"]
    assert scaled["minReplicaCount"] == 1
    assert scaled["maxReplicaCount"] >= 1


@pytest.mark.parametrize("target", TARGETS)
def test_every_variable_is_a_known_setting(target: str) -> None:
    assert env_errors(render(target)) == []


@pytest.mark.parametrize("target", TARGETS)
def test_the_worker_accepts_every_pods_settings(target: str) -> None:
    assert settings_errors(render(target)) == []


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_hardened_sized_probed_and_drain(target: str) -> None:
    assert pod_errors(render(target)) == []


@pytest.mark.parametrize("target", TARGETS)
def test_objects_fit_together(target: str) -> None:
    assert wiring_errors(render(target)) == []


def test_gpu_overlay_gives_the_worker_one_gpu_and_requires_it() -> None:
    objs = render("overlays/gpu")
    resources = worker_container(objs)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    assert container_env(objs, worker_container(objs))["SCANSTREAM_REQUIRE_GPU"] == "true"
    for name in (GATEWAY, EXPORT):  # GPUs for the worker only
        pod = the(objs, "Deployment", name)["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])


def test_secure_overlay_switches_every_client_and_the_scaler_to_sasl_ssl() -> None:
    objs = render("overlays/secure")
    for name in (WORKER, GATEWAY, EXPORT):
        container = the(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = container_env(objs, container)
        assert env["SCANSTREAM_SECURITY_PROTOCOL"] == "SASL_SSL", name
        assert env["SCANSTREAM_SASL_PASSWORD_FILE"].startswith("/var/run/secrets/"), name
        assert "SCANSTREAM_SASL_PASSWORD" not in env, name  # a file, not a variable
    auth = find(objs, "TriggerAuthentication")
    assert len(auth) == 1
    parameters = {ref["parameter"] for ref in auth[0]["spec"]["secretTargetRef"]}
    assert parameters == {"sasl", "username", "password", "tls", "ca", "cert", "key"}
    trigger = the(objs, "ScaledObject", WORKER)["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth[0]["metadata"]["name"]


def test_base_talks_plaintext() -> None:
    objs = render("base")
    env = container_env(objs, worker_container(objs))
    assert env.get("SCANSTREAM_SECURITY_PROTOCOL", "PLAINTEXT") == "PLAINTEXT"
    assert not find(objs, "TriggerAuthentication")


def test_readme_documents_every_secret_key_and_keeps_its_sections() -> None:
    text = README.read_text(encoding="utf-8")
    used = set().union(*(secret_keys(render(t)) for t in TARGETS))
    assert {"pseudonym-key", "sasl-username", "sasl-password", "ca.crt"} <= used
    assert [k for k in sorted(used) if f"`{k}`" not in text] == []
    assert "## Sizing guide" in text
    assert "KEDA's Kafka scaler: known traps and our settings" in text


# --- broken copies are reported ------------------------------------------------------------------
def test_schema_check_reports_a_misspelt_deployment_field() -> None:
    deployment = mutated(the(render("base"), "Deployment", WORKER))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")
    errors = schema_errors(deployment)
    assert errors and "readynessProbe" in errors[0], errors


def test_schema_check_reports_a_wrong_type_and_an_unknown_kind() -> None:
    pdb = mutated(the(render("base"), "PodDisruptionBudget", WORKER))
    pdb["spec"]["unhealthyPodEvictionPolicy"] = True
    assert schema_errors(pdb)
    unknown = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "scanstream"},
    }
    assert "not a Kubernetes" in schema_errors(unknown)[0]


def test_env_check_reports_an_unknown_scanstream_variable() -> None:
    objs = render("base")
    worker_container(objs)["env"].append({"name": "SCANSTREAM_DELIVRY", "value": "exactly-once"})
    errors = env_errors(objs)
    assert len(errors) == 1 and "SCANSTREAM_DELIVRY" in errors[0], errors


def test_env_check_reports_an_unknown_key_in_a_config_map() -> None:
    objs = render("base")
    cm = shared_config(objs)
    cm["data"]["SCANSTREAM_EVENT_TOPIC"] = "scans.events"  # EVENTS, misspelt
    errors = env_errors(objs)
    assert len(errors) == 1 and "SCANSTREAM_EVENT_TOPIC" in errors[0], errors


def test_env_check_reports_a_worker_without_broker_or_pod_name() -> None:
    objs = render("base")
    for cm in find(objs, "ConfigMap"):
        cm["data"].pop("KAFKA_BOOTSTRAP_SERVERS", None)
    container = worker_container(objs)
    container["env"] = [e for e in container["env"] if e["name"] != "SCANSTREAM_WORKER_ID"]
    errors = env_errors(objs)
    assert any("BOOTSTRAP_SERVERS" in e for e in errors), errors
    assert any("SCANSTREAM_WORKER_ID" in e and "container worker" in e for e in errors), errors


def test_keda_check_reports_an_unknown_trigger_field() -> None:
    scaled = mutated(the(render("base"), "ScaledObject", WORKER))
    scaled["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "5"  # lagThreshold, misspelt
    errors = keda_errors(scaled)
    assert len(errors) == 1 and "'lagTreshold'" in errors[0], errors


def test_keda_check_reports_a_misspelt_max_replica_count() -> None:
    scaled = mutated(the(render("base"), "ScaledObject", WORKER))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    errors = keda_errors(scaled)
    assert any("'maxReplicas'" in e for e in errors), errors
    assert any("maxReplicaCount must be set" in e for e in errors), errors


def test_keda_check_reports_values_keda_would_misread_and_broken_rules() -> None:
    scaled = mutated(the(render("base"), "ScaledObject", WORKER))
    meta = scaled["spec"]["triggers"][0]["metadata"]
    meta["allowIdleConsumers"] = True  # unquoted: not a string
    meta["lagThreshold"] = "0"
    meta["offsetResetPolicy"] = "latest"
    scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"][
        "stabilisationWindowSeconds"
    ] = 600
    errors = "\n".join(keda_errors(scaled))
    assert "allowIdleConsumers: True must be a string" in errors
    assert 'allowIdleConsumers must be "false"' in errors
    assert "lagThreshold='0'" in errors
    assert "offsetResetPolicy must be 'earliest'" in errors
    assert "stabilisationWindowSeconds" in errors


def test_keda_check_reports_an_unknown_authentication_parameter() -> None:
    auth = mutated(find(render("overlays/secure"), "TriggerAuthentication")[0])
    auth["spec"]["secretTargetRef"][2]["parameter"] = "passwd"
    auth["spec"]["secretTargetRef"][2]["secret"] = "x"
    errors = keda_errors(auth)
    assert any("'passwd' is no Kafka scaler parameter" in e for e in errors), errors
    assert any("unknown field 'secret'" in e for e in errors), errors


def test_settings_check_reports_what_the_worker_would_refuse() -> None:
    objs = render("overlays/secure")
    cm = next(c for c in find(objs, "ConfigMap") if "SCANSTREAM_SASL_MECHANISM" in c["data"])
    del cm["data"]["SCANSTREAM_SASL_MECHANISM"]
    cm["data"]["SCANSTREAM_SSL_CAFILE"] = "/etc/ssl/kafka-ca.crt"  # mounted nowhere
    errors = settings_errors(objs)
    assert any("SASL_SSL needs SCANSTREAM_SASL_MECHANISM" in e for e in errors), errors
    assert any("SCANSTREAM_SSL_CAFILE: /etc/ssl/kafka-ca.crt is on no volume" in e for e in errors)


def test_settings_check_reports_a_bad_value() -> None:
    objs = render("base")
    cm = shared_config(objs)
    cm["data"]["SCANSTREAM_MAX_PIXELS"] = "16 Mi"
    errors = settings_errors(objs)
    assert errors and all("SCANSTREAM_MAX_PIXELS='16 Mi' is not an integer" in e for e in errors)


def test_pod_check_reports_service_links_root_and_a_short_grace_period() -> None:
    objs = render("base")
    pod = the(objs, "Deployment", WORKER)["spec"]["template"]["spec"]
    del pod["enableServiceLinks"]
    del pod["securityContext"]["runAsUser"]
    pod["terminationGracePeriodSeconds"] = 30
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    errors = "\n".join(pod_errors(objs))
    assert "enableServiceLinks must be false" in errors
    assert "runAsUser must be a numeric non-root user" in errors
    assert "terminationGracePeriodSeconds 30 must exceed" in errors
    assert "readOnlyRootFilesystem must be true" in errors


def test_wiring_check_reports_a_scaler_on_another_topic_and_a_wrong_probe() -> None:
    objs = render("base")
    the(objs, "ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]["topic"] = "scans.other"
    worker_container(objs)["readinessProbe"]["httpGet"]["path"] = "/healthz"
    errors = "\n".join(wiring_errors(objs))
    assert "topic 'scans.other' is not the worker's 'scans.events'" in errors
    assert "readinessProbe must GET /readyz" in errors
