from . import DeviceProfile, OrtSettings, register_profile

PROFILE = register_profile(
    DeviceProfile(
        name="generic-x86-64",
        title="x86-64 PC or server",
        arch="x86_64",
        cores=2,
        memory_mb=4096,
        cpu="x86-64",
        cpu_features=frozenset({"avx2"}),
        ort=OrtSettings(intra_op_threads=1),
        max_queue=50_000,
        queue_budget_mb=256,
        outgoing_budget_mb=128,
        openvino=True,
        notes="int8 pays off with VNNI (avx512_vnni / avx_vnni); `devices detect` reads the real flags.",
    )
)
