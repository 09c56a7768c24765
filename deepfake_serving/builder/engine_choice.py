"""Which engine and precision an archive serves with when the user does not say (``--engine auto``, the
default): OpenVINO in bf16 where this CPU has bf16 units (AVX512-BF16, AMX) and the bf16 graph passes the
agreement proof on held-out faces, else ONNX Runtime in fp32. The decision, its reason and the CPU it was
taken on go into the manifest (``engine_decision``); ``--engine`` overrides it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

from deepfake_serving.engines import AUTO_ENGINE as AUTO
from deepfake_serving.engines import DEFAULT_ENGINE

FAST_ENGINE, FAST_PRECISION = "openvino", "bf16"
CPU_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "avx512f")  # the ones worth recording


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: list[str]  # of CPU_FLAGS, those present
    bf16_units: bool  # OpenVINO's CPU plugin reports BF16 (what it would run bf16 on)


@lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    """This CPU's model name and flags, from /proc/cpuinfo ("unknown" and none where it cannot be read)."""
    model, flags = "unknown", frozenset[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = frozenset(value.split())
                break
    except OSError:
        pass
    return model, flags


def has_bf16_units() -> bool:
    """AVX512-BF16 or AMX: bf16 arithmetic in hardware (torch's bf16 autocast pays off)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_model_and_flags()[1])


@lru_cache(maxsize=1)
def this_cpu() -> Cpu:
    import openvino as ov

    model, flags = cpu_model_and_flags()
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return Cpu(model, [flag for flag in CPU_FLAGS if flag in flags], bf16)


@dataclass(frozen=True)
class EngineDecision:
    requested: str  # --engine as given
    engine: str
    reduced: str | None  # the reduced precision to build (and prove), None for fp32
    reason: str
    fallback: bool = False  # a refused proof falls back to fp32 (auto's own choice) rather than failing the build

    def refused(self, refusal: str) -> "EngineDecision":
        return replace(self, engine=DEFAULT_ENGINE, reduced=None, fallback=False,
                       reason=f"{refusal}: fp32 on {DEFAULT_ENGINE}")

    def record(self) -> dict:
        """The manifest's ``engine_decision``."""
        return {"requested": self.requested, "engine": self.engine, "precision": self.reduced or "fp32",
                "reason": self.reason, "cpu": asdict(this_cpu())}


def decide(engine: str, quantize: str | None) -> EngineDecision:
    """An explicit engine as asked; ``auto`` with an explicit precision: the engine that runs it; ``auto``
    alone: bf16 on OpenVINO where the CPU has bf16 units (falling back to fp32 if its proof fails)."""
    if engine != AUTO:
        return EngineDecision(engine, engine, quantize, "--engine " + engine)
    if quantize:
        chosen = FAST_ENGINE if quantize == FAST_PRECISION else DEFAULT_ENGINE
        return EngineDecision(AUTO, chosen, quantize, f"--quantize {quantize} runs on {chosen}")
    if this_cpu().bf16_units:
        return EngineDecision(AUTO, FAST_ENGINE, FAST_PRECISION, "this CPU has bf16 units and the bf16 graph "
                              "passed its agreement proof", fallback=True)
    return EngineDecision(AUTO, DEFAULT_ENGINE, None, f"this CPU has no bf16 units: fp32 on {DEFAULT_ENGINE}")
