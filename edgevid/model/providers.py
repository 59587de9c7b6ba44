"""Which onnxruntime execution provider runs the graphs, and with which options.

``select_providers(device, available)`` is a pure function of the requested device and the provider
names the installed onnxruntime reports (``onnxruntime.get_available_providers()``), so the choice for
machines we do not have (CUDA, DirectML) is testable from explicit lists.

Devices: ``auto`` picks the first of CUDA -> DirectML -> OpenVINO -> CPU that is installed and logs
the choice; a named device that is missing raises :class:`ProviderUnavailableError` naming the
available ones. The CPU provider is always appended as a fallback for operators a GPU provider lacks.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Sequence

from edgevid.errors import ProviderUnavailableError

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
PROVIDER_BY_DEVICE = {
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": CPU,
}
AUTO_ORDER = ("cuda", "dml", "openvino", "cpu")
DEVICES = ("auto",) + AUTO_ORDER

# The OrtValue device name used for IO binding: tensors of these providers live in device memory.
_ORT_DEVICE = {"cuda": "cuda", "dml": "dml"}


@dataclass(frozen=True)
class ProviderChoice:
    """The resolved device: ordered (provider, options) pairs for ``InferenceSession``."""

    device: str                                   # "cuda" | "dml" | "openvino" | "cpu"
    providers: tuple[tuple[str, dict], ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.providers[0][0]

    @property
    def ort_device(self) -> str:
        """Where IO binding keeps tensors (the KV cache): ``cuda``/``dml`` on GPUs, else ``cpu``."""
        return _ORT_DEVICE.get(self.device, "cpu")

    @property
    def on_gpu(self) -> bool:
        return self.ort_device != "cpu"

    def names(self) -> list[str]:
        return [name for name, _ in self.providers]

    def options(self) -> list[dict]:
        return [dict(opts) for _, opts in self.providers]


def provider_options(device: str, *, threads: int | None = None) -> dict:
    """Options for one provider, chosen deliberately:

    - CUDA: ``kSameAsRequested`` grows the arena by what is asked instead of doubling, because the KV
      cache grows a little every step and doubling would reserve up to twice the memory it needs.
    - DirectML: device 0, no options beyond the session settings it requires (see ``sessions``).
    - OpenVINO: CPU device and **f32 inference precision**. On CPUs with bf16 units (avx512_bf16,
      AMX) OpenVINO otherwise runs f32 graphs in bf16, which changes logits by ~1e-2 and greedy tokens.
      ``load_config`` is the non-deprecated way (ORT >= 1.23) to pass OpenVINO properties.
    """
    if device == "cuda":
        return {"device_id": "0", "arena_extend_strategy": "kSameAsRequested"}
    if device == "dml":
        return {"device_id": "0"}
    if device == "openvino":
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        return {"device_type": "CPU", "load_config": json.dumps({"CPU": config})}
    return {}


def select_providers(device: str, available: Sequence[str], *, threads: int | None = None) -> ProviderChoice:
    """Map a requested device and the installed providers to the providers a session should use."""
    requested = (device or "auto").lower()
    if requested not in DEVICES:
        raise ProviderUnavailableError(
            f"unknown device {device!r}; accepted: {', '.join(DEVICES)}", param="device"
        )
    if requested == "auto":
        chosen = next(d for d in AUTO_ORDER if d == "cpu" or PROVIDER_BY_DEVICE[d] in available)
        log.info("device auto -> %s (installed providers: %s)", PROVIDER_BY_DEVICE[chosen], ", ".join(available))
    else:
        chosen = requested
        if PROVIDER_BY_DEVICE[chosen] not in available and chosen != "cpu":
            raise ProviderUnavailableError(
                f"device {requested!r} needs {PROVIDER_BY_DEVICE[chosen]}, which the installed onnxruntime "
                f"does not offer; available providers: {', '.join(available) or 'none'}"
                f"{_install_hint(chosen)}",
                param="device",
            )
    providers = [(PROVIDER_BY_DEVICE[chosen], provider_options(chosen, threads=threads))]
    if chosen != "cpu":
        providers.append((CPU, {}))
    return ProviderChoice(device=chosen, providers=tuple(providers))


def _install_hint(device: str) -> str:
    package = {"cuda": "onnxruntime-gpu", "dml": "onnxruntime-directml", "openvino": "onnxruntime-openvino"}[device]
    return f" (pip install {package} in place of onnxruntime)"


def installed_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())
