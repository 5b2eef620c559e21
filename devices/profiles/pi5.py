from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="rpi-5",
        title="Raspberry Pi 5",
        arch="aarch64",
        cores=4,
        memory_mb=8192,
        cpu="Cortex-A76 @ 2.4 GHz",
        cpu_features=frozenset({"asimd", "asimddp", "asimdhp", "crc32", "atomics"}),
        ort=OrtSettings(intra_op_threads=3),
        max_queue=50_000,
        queue_budget_mb=512,
        outgoing_budget_mb=128,
        openvino=True,
        notes="The A76 has dot-product (SDOT/UDOT): static int8 QDQ models can beat fp32 here.",
    )
)
