from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="rpi-3b",
        title="Raspberry Pi 3 Model B/B+",
        arch="aarch64",
        cores=4,
        memory_mb=1024,
        cpu="Cortex-A53 @ 1.2-1.4 GHz",
        cpu_features=frozenset({"asimd"}),
        ort=OrtSettings(intra_op_threads=3),
        max_queue=5_000,
        queue_budget_mb=64,
        outgoing_budget_mb=32,
        openvino=True,
        notes="No dot-product: keep fp32. Use a 64-bit OS: onnxruntime publishes aarch64 wheels only.",
    )
)
