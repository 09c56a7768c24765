"""A KServe InferenceService for cluster users: the serving version as the predictor and the
candidate at ``canaryTrafficPercent`` (KServe keeps the previous revision for the rest).

Generated here, checked against a JSON Schema of the fields we emit, written from KServe's
v1beta1 CRD (``serving.kserve.io_inferenceservices.yaml``: ``spec.predictor`` is a
PredictorSpec whose ``model`` is a ModelSpec with ``modelFormat.name`` required,
``canaryTrafficPercent`` an int64, ``protocolVersion`` one of v1, v2, grpc-v2). Not applied
to a cluster here.
"""

from __future__ import annotations

import jsonschema
import yaml

RUNTIMES = {"torchserve": ("pytorch", "v1", "kserve-torchserve"), "triton": ("triton", "v2", "kserve-tritonserver")}

SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False, "properties": {
            "predictor": {"type": "object", "required": ["model"], "properties": {
                "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
                "minReplicas": {"type": "integer", "minimum": 0},
                "maxReplicas": {"type": "integer", "minimum": 0},
                "model": {"type": "object", "required": ["modelFormat"], "properties": {
                    "modelFormat": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string"}, "version": {"type": "string"}}},
                    "protocolVersion": {"enum": ["v1", "v2", "grpc-v2"]},
                    "runtime": {"type": "string"},
                    "storageUri": {"type": "string", "pattern": "^(gs|s3|pvc|https?|oci|hdfs|webhdfs)://"},
                    "resources": {"type": "object"}}}}}}},
    },
}


def inference_service(name: str, backend: str, storage_uri: str, canary_percent: int | None = None,
                      candidate_version: str = "", min_replicas: int = 1) -> dict:
    """The manifest to apply for one rollout step: without ``canary_percent`` the storage URI serves
    everything; with it, this (new) revision gets that share and the previous revision the rest."""
    model_format, protocol, runtime = RUNTIMES[backend]
    predictor = {"minReplicas": min_replicas, "model": {
        "modelFormat": {"name": model_format}, "protocolVersion": protocol, "runtime": runtime,
        "storageUri": storage_uri}}
    if canary_percent is not None:
        predictor = {"canaryTrafficPercent": int(canary_percent), **predictor}
    manifest = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                "metadata": {"name": name, "annotations": {"deepfake-serving/candidate-version": candidate_version}},
                "spec": {"predictor": predictor}}
    jsonschema.validate(manifest, SCHEMA)
    return manifest


def to_yaml(manifest: dict) -> str:
    return yaml.safe_dump(manifest, sort_keys=False)
