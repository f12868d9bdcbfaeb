"""deploy/: Prometheus config and alert rules pass promtool (incl. rule unit tests); the Grafana
dashboard parses, its PromQL parses, and it only queries series that worker.metrics exports."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tooling import require_tool

from worker.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "scanstream-dashboard.json"

# Series Prometheus itself attaches to every scrape target, not exported by the worker.
PROMETHEUS_SYNTHETIC = {"up"}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}
# Grafana's variables, replaced by values that make the query plain PromQL.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$job": ".*", "$instance": ".*"}


def run_promtool(*args: str) -> str:
    result = subprocess.run(
        [require_tool("promtool", "prometheus"), *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def registered_names() -> set[str]:
    """Every sample name the worker exports (with _bucket, _sum, _count, _total, ...)."""
    m = Metrics()
    # Give labelled families one child each, so that they show samples.
    m.set_lag("t", 0, 1)
    m.set_model_info("m", "1", "CPUExecutionProvider")
    return {s.name for family in m.registry.collect() for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small scanner, not a full parser)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range and subquery durations
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        followed_by_call = e[match.end() :].lstrip().startswith("(")
        if not followed_by_call and match.group().lower() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def test_metric_name_scanner() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (stage, le) (rate(a_bucket{job=~"x", le!="1e3"}[5m])))'
        " / on (job) group_left(x) b > 1e3 and max without (i) (c offset 5m) unless sum(d) by (q)"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}


def dashboard() -> Any:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item)


def dashboard_exprs() -> list[str]:
    exprs = [n["expr"] for n in walk(dashboard()) if isinstance(n.get("expr"), str)]
    assert exprs
    return exprs


def plain_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr


def test_prometheus_config_is_valid() -> None:
    out = run_promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out


def test_alert_rules_are_valid() -> None:
    out = run_promtool("check", "rules", "rules.yml")
    assert "5 rules found" in out


def test_alert_rules_unit_tests_pass() -> None:
    run_promtool("test", "rules", "rules_test.yml")


def rule_exprs() -> list[str]:
    # Read with a regex rather than YAML so as not to depend on PyYAML: every `expr:` is either
    # inline or a `|` block indented under it.
    text = (PROMETHEUS / "rules.yml").read_text(encoding="utf-8")
    exprs = []
    for match in re.finditer(r"^( *)expr: *(.*)\n((?:\1 +.*\n)*)", text, re.MULTILINE):
        exprs.append(match.group(2) if match.group(2) not in ("|", ">") else match.group(3))
    return exprs


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    alerts = re.findall(r"^\s*- alert: (\w+)", (PROMETHEUS / "rules.yml").read_text(), re.MULTILINE)
    assert len(alerts) == 5
    tests = (PROMETHEUS / "rules_test.yml").read_text()
    for alert in alerts:
        cases = re.findall(
            rf"alertname: {alert}\n\s*exp_alerts:( \[\])?", tests, flags=re.MULTILINE
        )
        assert "" in cases, f"{alert} is never tested firing"
        assert " []" in cases, f"{alert} is never tested staying quiet"


def test_rules_use_only_exported_series() -> None:
    exprs = rule_exprs()
    assert len(exprs) == 5
    known = registered_names() | PROMETHEUS_SYNTHETIC
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{sorted(names - known)} in {expr}"


def test_dashboard_uses_only_exported_series() -> None:
    known = registered_names()
    for expr in dashboard_exprs():
        names = metric_names(plain_promql(expr))
        assert names, expr
        assert names <= known, f"{sorted(names - known)} in {expr}"
    for node in walk(dashboard()["templating"]):
        query = node.get("definition")
        if isinstance(query, str) and query.startswith("label_values("):
            metric = re.match(r"label_values\((\w+)", query)
            assert metric and metric.group(1) in known, query


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    # promtool has no "check expression"; recording rules are parsed by `check rules`.
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        lines += [
            f"      - record: dashboard:expr{i}",
            f"        expr: {json.dumps(plain_promql(expr))}",
        ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [require_tool("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_shape() -> None:
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["targets"], panel["title"]
    queried = " ".join(dashboard_exprs())
    for needle in (
        "scanstream_events_total",  # throughput and dead-letter rate
        "histogram_quantile(0.5, sum by (le) (rate(scanstream_e2e_latency_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(scanstream_e2e_latency_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(scanstream_e2e_latency_seconds_bucket",
        "sum by (stage, le) (rate(scanstream_stage_duration_seconds_bucket",
        "scanstream_consumer_lag",
        'outcome="dead_letter"',
        "scanstream_batch_size_bucket",
        "scanstream_model_info",
    ):
        assert needle in queried, needle
