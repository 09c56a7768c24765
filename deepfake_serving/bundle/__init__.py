"""Bundles: one variant's weights, its graph and a manifest. ``Bundle.open`` loads (torch-free);
writing them is ``deepfake_serving.builder``'s."""

from deepfake_serving.bundle.load import Bundle
from deepfake_serving.bundle.manifest import GRAPH_NAME, LAYOUT, MANIFEST_NAME, BundleManifest

__all__ = ["GRAPH_NAME", "LAYOUT", "MANIFEST_NAME", "Bundle", "BundleManifest"]
