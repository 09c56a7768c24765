"""The alert rules: `promtool check rules` and `promtool test rules` (Debian's promtool), and the names
they use are the catalogue's; the Grafana dashboard is what the code writes and names existing metrics."""

import re
import subprocess

import pytest
import yaml

from deepfake_serving.core.errors import CATALOGUE
from deepfake_serving.monitoring.catalogue import HISTOGRAM, METRICS
from deepfake_serving.serving.launch.monitor import RULES, monitoring_binary


@pytest.fixture(scope="module")
def promtool():
    try:
        return str(monitoring_binary("promtool"))
    except FileNotFoundError as err:
        pytest.skip(str(err))


def test_promtool_checks_the_rules(promtool):
    run = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert run.returncode == 0 and "SUCCESS: 9 rules found" in run.stdout, run.stdout + run.stderr


def test_promtool_unit_tests_of_the_rules_pass(promtool):
    tests = RULES.with_name("deepfake-alerts.test.yml")
    run = subprocess.run([promtool, "test", "rules", tests.name], capture_output=True, text=True, cwd=tests.parent)
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    tested = {case["alertname"] for test in yaml.safe_load(tests.read_text())["tests"] for case in test["alert_rule_test"]}
    assert tested == alerts  # every alert has its unit test


def test_the_rules_use_the_catalogues_names_and_server_error_codes():
    text = RULES.read_text()
    names = known_names()  # the catalogue's and the job API's own
    expressions = "\n".join(rule["expr"] for group in yaml.safe_load(text)["groups"] for rule in group["rules"])
    used = set(re.findall(r"\bdeepfake_[a-z_]+", expressions))
    assert used and used <= names, used - names
    server_errors = {code for code, kind in CATALOGUE.items() if kind.status >= 500}
    for codes in re.findall(r'code=~"([^"]+)"', text):
        assert set(codes.split("|")) == server_errors


def known_names() -> set[str]:
    from deepfake_serving.jobs.metrics import FrontMetrics

    class NoRedis:
        def llen(self, queue):
            return 0

        def hgetall(self, key):
            return {b"done": b"1"} if key != "deepfake:workers" else {}

    metrics = FrontMetrics(NoRedis(), "q")
    metrics.request("/v1/jobs", 202, 0.1)
    metrics.submitted.labels("image").inc()
    front = {s.name for family in metrics.registry.collect() for s in family.samples}
    ours = {spec.name for spec in METRICS} | {f"{spec.name}_{part}" for spec in METRICS if spec.kind == HISTOGRAM
                                              for part in ("bucket", "sum", "count")}
    return ours | front | {"up", "ALERTS"}


def test_the_dashboard_is_what_the_code_writes_and_names_existing_metrics():
    from deepfake_serving.monitoring.dashboard import DASHBOARD, dashboard, render

    assert DASHBOARD.read_text() == render(), "python -m deepfake_serving.monitoring.dashboard rewrites it"
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels) and all(p["targets"] for p in panels)
    expressions = [t["expr"] for p in panels for t in p["targets"]]
    used = {name for expr in expressions for name in re.findall(r"\b(deepfake_[a-z_]+|up|ALERTS)\b", expr)}
    assert used <= known_names(), used - known_names()
    assert {spec.name for spec in METRICS} <= {name.rsplit("_bucket", 1)[0].rsplit("_sum", 1)[0].rsplit("_count", 1)[0]
                                               for name in used}  # every catalogue metric is on a panel
