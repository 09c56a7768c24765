"""Prediction metrics and score drift, whatever the server: one catalogue of metric names (Prometheus
conventions), one recorder fed by the pipelines' stage observer and by each answer, and the sinks each
server publishes through (TorchServe's metrics API, Triton's custom metrics, prometheus_client)."""
