from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="rpi-zero-2w",
        title="Raspberry Pi Zero 2 W",
        arch="aarch64",
        cores=4,
        memory_mb=512,
        cpu="Cortex-A53 @ 1 GHz",
        cpu_features=frozenset({"asimd"}),
        # 512 MB shared with the OS and Mosquitto: small queues; leave a core for MQTT.
        ort=OrtSettings(intra_op_threads=2),
        max_queue=1_000,
        queue_budget_mb=32,
        outgoing_budget_mb=16,
        openvino=True,
        notes="No dot-product: keep fp32. Tiny models (trees, small MLPs) only; cameras at low resolution.",
    )
)
