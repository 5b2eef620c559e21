"""The ``[fleet]`` table: which release group a device follows, where it keeps what it downloads, its bounds.

```toml
[trust]
public_keys = ["keys/release.pub"]   # a device trusts releases (and bundles) signed by these keys only

[fleet]
group = "greenhouse"                 # releases published with `edge-runtime publish ... --fleet greenhouse`
# dir = "fleet"                      # downloads, versions kept, rollout state (default: in [device] state_dir)
# models = ["vibration"]             # the [[models]] entries releases may replace (default: all)
# max_disk_mb = 1024                 # everything under dir; a release that would not fit is refused before download
# max_download_kb_s = 1024           # bandwidth used for downloads
```
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FleetConfig", "GROUP_PATTERN"]

# A fleet group is a level of the release topics: no wildcards, no slash.
GROUP_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class FleetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    group: str = Field(
        pattern=GROUP_PATTERN,
        description="The release group this device follows (`edge-runtime publish ... --fleet GROUP`).",
    )
    dir: Path | None = Field(
        None,
        strict=False,
        description="Where downloads, the two versions kept and the rollout state live (relative to the config "
        "file); writable by the runtime, one per device. Default: fleet/<client_id> in [device] state_dir.",
    )
    models: list[str] | None = Field(
        None,
        description="The [[models]] entries a release may replace (by the release's model name); default: all.",
    )
    max_disk_mb: float = Field(
        1024.0,
        gt=0,
        le=1_000_000,
        description="Everything under `dir` at most (downloads and versions kept): a release that would not fit "
        "is refused before it is downloaded.",
    )
    max_download_kb_s: float = Field(
        1024.0, gt=0, le=10_000_000, description="Download bandwidth at most, in KB per second."
    )
    chunk_window: int = Field(
        4,
        ge=1,
        le=64,
        description="Chunks asked for at a time (one subscription each): what may be in flight to the device.",
    )
    max_chunk_kb: int = Field(
        1024,
        ge=16,
        le=64 * 1024,
        description="A release whose chunks are larger is refused (the fleet connection announces this as its "
        "MQTT v5 Maximum Packet Size).",
    )
