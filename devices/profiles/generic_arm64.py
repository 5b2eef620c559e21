from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="generic-arm64",
        title="Other 64-bit ARM board",
        arch="aarch64",
        cores=4,
        memory_mb=2048,
        cpu="ARMv8-A",
        cpu_features=frozenset({"asimd"}),
        ort=OrtSettings(intra_op_threads=2),
        max_queue=10_000,
        queue_budget_mb=128,
        openvino=True,
        notes="Conservative defaults; `devices detect` builds a this-machine profile with the real features.",
    )
)
