"""Device profiles and simulated devices (sensors publishing realistic streams over MQTT)."""

from .sensors import CONDITIONS, SensorFleet, VibrationSensor, vibration_dataset

__all__ = ["CONDITIONS", "SensorFleet", "VibrationSensor", "vibration_dataset"]
