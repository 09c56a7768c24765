"""The Grafana dashboard for the catalogue's metrics, the front's and the servers' own: written from here
into ``grafana/deepfake-serving.json`` (``python -m deepfake_serving.monitoring.dashboard``; a test checks
the committed file is what this writes). Import it into Grafana with a Prometheus data source."""

from __future__ import annotations

import json
import sys
from pathlib import Path

DASHBOARD = Path(__file__).parent / "grafana" / "deepfake-serving.json"
M = '{model=~"$model"}'
NO_FACE = '{label="NO_FACE", model=~"$model"}'

# (title, unit, [(PromQL, legend)]) per panel, two to a row.
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Answers per second by label", "reqps",
     [(f"sum by (model, label) (rate(deepfake_predictions_total{M}[5m]))", "{{model}} {{label}}")]),
    ("Requests ending in an error, by code", "reqps",
     [(f"sum by (model, code) (rate(deepfake_request_errors_total{M}[5m]))", "{{model}} {{code}}")]),
    ("P(fake): median and 90th percentile by version", "percentunit",
     [(f"histogram_quantile(0.5, sum by (model, version, le) (rate(deepfake_fake_probability_bucket{M}[5m])))",
       "p50 {{model}} v{{version}}"),
      (f"histogram_quantile(0.9, sum by (model, version, le) (rate(deepfake_fake_probability_bucket{M}[5m])))",
       "p90 {{model}} v{{version}}")]),
    ("Score drift (PSI; alert above 0.25)", "none",
     [(f"max by (model, version) (deepfake_score_drift_psi{M})", "{{model}} v{{version}}")]),
    ("Share of answers without a face", "percentunit",
     [(f"sum by (model) (rate(deepfake_predictions_total{NO_FACE}[10m])) / sum by (model) "
       f"(rate(deepfake_predictions_total{M}[10m]))", "{{model}}")]),
    ("Faces per answered request", "none",
     [(f"sum by (model) (rate(deepfake_faces_per_request_sum{M}[5m])) / sum by (model) "
       f"(rate(deepfake_faces_per_request_count{M}[5m]))", "{{model}}")]),
    ("Time in the model, p95", "s",
     [(f"histogram_quantile(0.95, sum by (model, le) (rate(deepfake_request_duration_seconds_bucket{M}[5m])))",
       "{{model}}")]),
    ("Stage time, p95", "s",
     [(f"histogram_quantile(0.95, sum by (stage, le) (rate(deepfake_stage_duration_seconds_bucket{M}[5m])))",
       "{{stage}}")]),
    ("Video frames analysed per second", "fps",
     [(f"sum by (model) (rate(deepfake_video_frames_analyzed_total{M}[5m]))", "{{model}}")]),
    ("Jobs: queued, and ended per second", "none",
     [("max(deepfake_jobs_queued)", "queued"),
      ("max by (state) (rate(deepfake_jobs_finished_total[5m]))", "{{state}}")]),
    ("The front: requests per second by route and status", "reqps",
     [("sum by (route, status) (rate(deepfake_front_requests_total[5m]))", "{{route}} {{status}}")]),
    ("The front: p95 by route", "s",
     [("histogram_quantile(0.95, sum by (route, le) (rate(deepfake_front_request_duration_seconds_bucket[5m])))",
       "{{route}}")]),
    ("Servers answering their scrape", "none",
     [('up{job=~"torchserve|triton|jobs"}', "{{job}} {{instance}}")]),
    ("Alerts firing", "none",
     [('ALERTS{alertstate="firing", alertname=~"Deepfake.*"}', "{{alertname}} {{model}}")]),
]


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": index + 1, "type": "timeseries", "title": title,
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    }


def dashboard() -> dict:
    return {
        "title": "deepfake-serving", "uid": "deepfake-serving", "schemaVersion": 38, "version": 1,
        "tags": ["deepfake-serving"], "timezone": "utc", "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "model", "type": "query", "label": "Model", "includeAll": True, "multi": True,
             "current": {"text": "All", "value": "$__all"}, "allValue": ".*",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(deepfake_predictions_total, model)", "refId": "model"},
             "definition": "label_values(deepfake_predictions_total, model)", "refresh": 2},
        ]},
        "panels": [panel(i, *spec) for i, spec in enumerate(PANELS)],
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    DASHBOARD.write_text(render())
    print(DASHBOARD, file=sys.stderr)
