"""Device profiles: what a board has (cores, memory, CPU features) and the settings that pay off there.

One registry (``edge_runtime.registry``): ``register_profile`` refuses duplicates and a failed lookup lists
the known names. Each board is one small module below that registers itself; adding a board is adding a
file and naming it in ``_BOARDS``. The profile of the machine this runs on (``this-machine``) is built by
``devices.detect``, which reads this module, never the other way round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edge_runtime.registry import Registry

__all__ = ["DeviceProfile", "OrtSettings", "register_profile", "get_profile", "known_profiles"]


@dataclass(frozen=True)
class OrtSettings:
    intra_op_threads: int = 1
    # Spinning threads burn the cores that paho and the broker need (ORT #3099).
    allow_spinning: bool = False
    graph_optimization_level: str = "all"  # disable | basic | extended | all
    providers: tuple[str, ...] = ("CPUExecutionProvider",)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    title: str
    arch: str  # aarch64 | x86_64
    cores: int
    memory_mb: int
    cpu: str = ""
    # Features that decide whether int8 pays off: ARM dot-product (asimddp) or x86 VNNI.
    cpu_features: frozenset[str] = frozenset()
    ort: OrtSettings = field(default_factory=OrtSettings)
    max_queue: int = 10_000  # inputs a route may hold, by default
    # Payload bytes all routes together may hold waiting (shared among them): what a flood of large inputs
    # may cost in memory, whatever their number.
    queue_budget_mb: int = 128
    # Bytes of messages waiting to leave (results, snapshots, events) while the broker is slow or away.
    outgoing_budget_mb: int = 64
    # OpenVINO publishes CPU wheels for 64-bit x86 and ARM (manylinux): where this is true,
    # `pip install 'edge-runtime[openvino]'` gives the converter and the runtime a second engine to measure.
    openvino: bool = False
    notes: str = ""

    @property
    def int8_pays_off(self) -> bool:
        """int8 kernels beat fp32 only with dot-product (ARMv8.2 SDOT) or VNNI instructions.

        Without them ONNX Runtime's int8 path is often slower than fp32 (onnxruntime #20052, #6695).
        """
        return bool(self.cpu_features & {"asimddp", "avx512_vnni", "avx_vnni", "amx_int8"})

    @property
    def quantization(self) -> str:
        return (
            "static int8 (QDQ), measured against fp32" if self.int8_pays_off else "none (fp32); fp16 only to save size"
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_features"] = sorted(self.cpu_features)
        d["ort"]["providers"] = list(self.ort.providers)
        d["int8_pays_off"] = self.int8_pays_off
        d["openvino_installed"] = _openvino_installed()
        d["quantization"] = self.quantization
        return d


def _openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


_BOARDS = ("pi_zero2w", "pi3", "pi4", "pi5", "generic_arm64", "generic_x86_64")
PROFILES: Registry[DeviceProfile] = Registry(
    "device profile",
    plugins=tuple(f"{__name__}.{board}" for board in _BOARDS),
    hint="(see `edge-runtime devices list`; `this-machine` is the detected board)",
)


def register_profile(profile: DeviceProfile) -> DeviceProfile:
    return PROFILES.register(profile.name, profile)


def known_profiles() -> list[str]:
    """The registered boards' names (``devices.detect.profile_names`` adds ``this-machine``)."""
    return PROFILES.names()


def get_profile(name: str) -> DeviceProfile:
    """A registered board's profile; ``UnknownNameError`` (a ``LookupError``) lists the known names."""
    return PROFILES.get(name)
