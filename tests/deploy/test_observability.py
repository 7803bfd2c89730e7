"""Alerts and the dashboard query metrics the processes really export, and the rules parse.

Covers: every ``fluxrelay_*`` series named in the PrometheusRule and the Grafana dashboard is
exported by the receiver's or the reconciler's metrics (both of its halves) (with the ``_total``,
``_bucket``, ``_count`` and ``_sum`` suffixes their types produce), with the label names used
in selectors; outcome values the alerts match are outcomes the receiver records; the rules
pass ``promtool check rules`` (Debian package ``prometheus``); the dashboard is valid JSON with
unique panel ids and a Prometheus datasource variable; the ServiceMonitor selects the metrics
Services on their ``metrics`` port.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from receiver import errors as receiver_errors
from receiver.metrics import Family, Histograms, IngressMetrics
from tests.deploy.rendering import DEPLOY_DIR, JSON, by_kind, named, render, selector_matches

DASHBOARD = DEPLOY_DIR / "observability" / "grafana-dashboard.json"
SERIES = re.compile(r"\b(fluxrelay_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
RECEIVER_OUTCOMES_OUTSIDE_ERRORS = {"accepted", "duplicate", "ignored", "ping", "rejected"}


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, from the real metric registries of both processes."""
    from reconciler.metrics import ReconcilerMetrics
    from reconciler.outcome_metrics import OutcomeMetrics

    series: dict[str, set[str]] = {}
    holders = (IngressMetrics(), ReconcilerMetrics(), OutcomeMetrics(CollectorRegistry()))
    for holder in holders:
        for metric in vars(holder).values():
            if isinstance(metric, Family):  # the receiver's lock-free hot-path metrics
                name, labels = metric.name, set(metric.labels)
                histogram = isinstance(metric, Histograms)
                counter = not histogram
            elif isinstance(metric, Counter | Gauge | Histogram):
                name, labels = metric._name, set(metric._labelnames)
                histogram, counter = isinstance(metric, Histogram), isinstance(metric, Counter)
            else:
                continue
            if counter:
                names = [f"{name}_total"]
            elif histogram:
                names = [f"{name}_bucket", f"{name}_count", f"{name}_sum"]
            else:
                names = [name]
            for n in names:
                series[n] = labels | ({"le"} if n.endswith("_bucket") else set())
    return series


def receiver_outcomes() -> set[str]:
    codes = {
        cls.code
        for cls in vars(receiver_errors).values()
        if isinstance(cls, type) and hasattr(cls, "code") and isinstance(cls.code, str)
    }
    return codes | RECEIVER_OUTCOMES_OUTSIDE_ERRORS


def rule_exprs() -> list[tuple[str, str]]:
    rule = named(render("observability"), "PrometheusRule", "fluxrelay")
    return [
        (r.get("alert") or r["record"], r["expr"])
        for group in rule["spec"]["groups"]
        for r in group["rules"]
    ]


def dashboard() -> JSON:
    doc: JSON = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def all_exprs() -> list[Any]:
    return [pytest.param(e, id=f"alert:{n}") for n, e in rule_exprs()] + [
        pytest.param(e, id=f"panel:{n}") for n, e in dashboard_exprs()
    ]


@pytest.mark.parametrize("expr", all_exprs())
def test_every_queried_series_and_label_is_exported(expr: str) -> None:
    exported = exported_series()
    found = SERIES.findall(expr)
    if not found:  # scrape health: Prometheus' own series for the metrics Services' jobs
        assert 'job=~"fluxrelay-' in expr, f"no fluxrelay series in {expr}"
        return
    for name, selector in found:
        assert name in exported, f"{name} is not exported by receiver/reconciler metrics"
        for label, _, value in MATCHER.findall(selector):
            if label == "namespace":
                continue  # added by Prometheus from the target
            assert label in exported[name], f"{name} has no label {label}"
            if name == "fluxrelay_receiver_deliveries_total" and label == "outcome":
                for outcome in value.split("|"):
                    assert outcome in receiver_outcomes(), f"unknown outcome {outcome}"


def test_the_rules_cover_the_failures_the_issue_names() -> None:
    exprs = " ".join(e for _, e in rule_exprs())
    for needle in (
        'outcome="not_stored"',
        "fluxrelay_reconciler_consumer_pending",
        "fluxrelay_reconciler_api_throttled_total",
        "fluxrelay_reconciler_mttp_seconds_bucket",
        "fluxrelay_reconciler_dead_letters_total",
    ):
        assert needle in exprs, needle


def test_promtool_accepts_the_rules(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    rule = named(render("observability"), "PrometheusRule", "fluxrelay")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in result.stdout


def test_dashboard_has_unique_panel_ids_and_a_prometheus_datasource_variable() -> None:
    doc = dashboard()
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_ships_as_a_grafana_sidecar_config_map() -> None:
    docs = render("observability")
    cm = named(docs, "ConfigMap", "fluxrelay-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["grafana-dashboard.json"]) == dashboard()


def test_service_monitor_scrapes_both_metrics_services_on_their_metrics_port() -> None:
    monitor = named(render("observability"), "ServiceMonitor", "fluxrelay")
    services = by_kind(render("overlays/ha"), "Service")
    selected = [
        s
        for s in services
        if selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    metrics = {
        s["metadata"]["name"]: s for s in selected if s["metadata"]["name"].endswith("-metrics")
    }
    assert set(metrics) == {"fluxrelay-receiver-metrics", "fluxrelay-reconciler-metrics"}
    (endpoint,) = monitor["spec"]["endpoints"]
    for svc in metrics.values():
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}, svc["metadata"]
        assert svc["spec"]["clusterIP"] == "None", "scrape every pod, not one behind a VIP"
