"""Device profiles and simulated devices (sensors publishing realistic streams over MQTT)."""

from .sensors import CONDITIONS, SensorFleet, VibrationSensor, vibration_dataset

__all__ = ["CONDITIONS", "SensorFleet", "VibrationSensor", "vibration_dataset", "profile_for"]


def profile_for(name: str | None = None):
    """The named device profile, or (None) this machine's: the detected board with its real cores and features.

    The runtime takes its ONNX Runtime settings from here unless the config says otherwise.
    """
    from .detect import this_machine
    from .profiles import get_profile

    return get_profile(name) if name else this_machine()
