from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="rpi-4b",
        title="Raspberry Pi 4 Model B",
        arch="aarch64",
        cores=4,
        memory_mb=4096,
        cpu="Cortex-A72 @ 1.5-1.8 GHz",
        cpu_features=frozenset({"asimd", "crc32"}),
        ort=OrtSettings(intra_op_threads=3),
        max_queue=20_000,
        queue_budget_mb=256,
        openvino=True,
        notes="The A72 has no dot-product instructions: int8 is usually slower than fp32 here; measure it first.",
    )
)
