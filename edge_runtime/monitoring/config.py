"""Route keys for model monitoring: drift, shadow models, sample capture.

``MonitoringFields`` holds the keys a ``[[routes]]`` entry takes for monitoring; ``RouteConfig`` gets them
by inheriting it (or by copying the fields). ``check_monitoring`` does the checks that need the other
tables (the shadow must name a model of ``[[models]]``).

```toml
[[routes]]
# ...
drift_window = 1000          # rows in the rolling window; 0: no drift monitoring
drift_threshold = 0.2        # PSI above which the route is drifting
shadow = "vibration-v2"      # also run this model on a share of the inputs and compare
shadow_fraction = 0.1
[routes.capture]
dir = "captures/vibration"
max_mb = 200
fraction = 0.01
low_confidence = 0.6
drift = true
```
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CaptureConfig", "MonitoringFields", "check_monitoring"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CaptureConfig(_Strict):
    dir: Path = Field(
        strict=False,
        description="Directory of the capture ring, relative to the config file. "
        "Give each route (and each worker of `run --workers N`) its own.",
    )
    max_mb: float = Field(
        100.0, gt=0, le=1_000_000, description="The ring's size cap in MB: the oldest segments are deleted first."
    )
    fraction: float = Field(0.0, ge=0, le=1, description="Share of all rows captured, evenly spread.")
    low_confidence: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Also capture every row whose confidence (classifiers' top score, detectors' best detection) "
        "is below this.",
    )
    drift: bool = Field(False, description="Also capture every row while the route's drift alert is active.")

    @model_validator(mode="after")
    def _something(self) -> CaptureConfig:
        if not self.fraction and self.low_confidence is None and not self.drift:
            raise ValueError("nothing would be captured: set fraction, low_confidence or drift")
        return self


class MonitoringFields(_Strict):
    drift_window: int = Field(
        1000,
        ge=0,
        le=1_000_000,
        description="Rows in the drift window (used when the bundle has reference statistics): 0 (off) or at least "
        "100. Under a few hundred rows the scores are noisy.",
    )
    drift_threshold: float = Field(
        0.2,
        gt=0,
        le=100,
        description="Drift score (PSI) above which, held for a whole window, a drift alert is published; "
        "0.2 is the usual level of a significant shift.",
    )
    shadow: str | None = Field(
        None,
        description="A model of [[models]] (not the route's own) to also run on a share of the inputs, "
        "compared with the live results and never delaying them.",
    )
    shadow_fraction: float = Field(0.1, gt=0, le=1, description="Share of the inputs the shadow runs on.")
    shadow_tolerance: float = Field(
        0.01,
        ge=0,
        le=10,
        description="Regressors: relative difference within which shadow and live values agree.",
    )
    capture: CaptureConfig | None = Field(
        None,
        description="Sample capture to disk: inputs and results kept in a size-capped ring, for retraining. "
        "Off when absent; when present, set fraction, low_confidence or drift.",
    )

    @model_validator(mode="after")
    def _window(self) -> MonitoringFields:
        if 0 < self.drift_window < 100:
            raise ValueError(
                f"drift_window {self.drift_window} is too small for a stable score: 0 (off) or at least 100"
            )
        return self


def check_monitoring(route: MonitoringFields, model: str, models: set[str]) -> str | None:
    """The cross-table problem of a route's monitoring keys, or None (the caller adds key and line)."""
    if route.shadow is not None:
        if route.shadow not in models:
            return f"shadow: no model named {route.shadow!r}; defined: {', '.join(sorted(models))}"
        if route.shadow == model:
            return "shadow: the shadow model is the route's own model"
    return None
