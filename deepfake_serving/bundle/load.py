"""A bundle opened from its directory: the manifest read once, the variant, and a face scorer for an
engine (or the torch models) with every file's sha256 checked once. Torch-free unless the torch engine
or the torch models are asked for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deepfake_serving.bundle.manifest import BundleManifest
from deepfake_serving.core.digest import check_file
from deepfake_serving.core.errors import CheckpointError
from deepfake_serving.core.threads import intra_op_threads
from deepfake_serving.engines import (
    GRAPH_ENGINES,
    Device,
    FaceScorer,
    Graph,
    batch_size,
    check_engine,
    graph_runtime,
    set_torch_threads,
    torch_scorer,
)
from deepfake_serving.engines.scorers import GraphScorer
from deepfake_serving.variants import Variant, get_variant


@dataclass(frozen=True)
class Bundle:
    directory: Path
    manifest: BundleManifest
    variant: Variant

    @classmethod
    def open(cls, directory: str | Path) -> "Bundle":
        directory = Path(directory)
        manifest = BundleManifest.read(directory)
        try:
            variant = get_variant(manifest.variant)
        except KeyError as exc:
            raise CheckpointError(f"{directory}: {exc.args[0]}") from None
        return cls(directory, manifest, variant)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def trained(self) -> bool:
        return self.manifest.trained

    def scorer(self, engine: str | None = None, device: Device = Device(), threads: int | None = None,
               batch: int | None = None) -> FaceScorer:
        """The face scorer on ``engine`` (default: the manifest's). A tampered bundle is refused whole:
        the files this engine does not read are checked here, the ones it reads by their loader."""
        engine = check_engine(engine or self.manifest.engine)
        batch = batch or batch_size(engine, device)
        read = self.manifest.weights if engine == "torch" else [self.manifest.onnx]
        for entry in self.manifest.files:
            if entry not in read:
                check_file(self.directory, entry)
        if engine == "torch":
            set_torch_threads(intra_op_threads(threads))
            return torch_scorer(self.variant, self.torch_models(), batch, device)
        return GraphScorer(self.graph(engine, device, threads, batch), self.variant, batch)

    def graph(self, engine: str | None = None, device: Device = Device(), threads: int | None = None,
              batch: int | None = None) -> Graph:
        """The ONNX graph on a graph engine's runtime (default: the manifest's engine when it runs graphs,
        else ONNX Runtime), checked on the bytes it runs."""
        engine = engine or (self.manifest.engine if self.manifest.engine in GRAPH_ENGINES else GRAPH_ENGINES[0])
        entry = self.manifest.onnx
        if not entry:
            raise CheckpointError(f"{self.directory} has no ONNX graph (built before engines existed): rebuild it, "
                                  "or serve it with the torch engine")
        path = self.directory / entry["file"]
        if not path.is_file():
            raise CheckpointError(f"{path} is missing")
        return graph_runtime(engine, path.read_bytes(), path.name, entry["sha256"], threads, device,
                             entry.get("precision", "fp32"), batch)

    def torch_models(self) -> list:
        """One torch model per checkpoint (imports torch), each weights file checked first."""
        try:
            from deepfake_serving.variants import create_model

            return [create_model(self.variant.name, check_file(self.directory, entry))
                    for entry in self.manifest.weights]
        except ImportError as err:  # a lean worker: torch from the CPU index, nothing else of [build]
            raise CheckpointError(f"the torch engine builds the variant's network, which needs {err.name} "
                                  "(pip install 'deepfake-serving[build]'); this install serves graph engines "
                                  "only: rebuild the archive with --engine onnxruntime, openvino or auto") from None
