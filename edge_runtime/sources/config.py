"""Config for a route's video source: the keys beside (or instead of) ``subscribe``.

```toml
[[routes]]
source = "rtsp://cam.local:554/stream1"     # or "/dev/video0", "clips/door.mp4", "http://cam/mjpeg"
source_name = "driveway"                    # {1} in the route's topics; default: from the source
fps = 5                                     # frames per second delivered (the newest only)
username_env = "CAM_USER"                   # credentials come from the environment, never the file
password_env = "CAM_PASSWORD"
# realtime = false                          # files: as fast as the model takes them (benchmarks)
# loop = true                               # files: start again at the end
```
The lead adds these fields to RouteConfig; ``SourceConfig.build(base_dir)`` makes the ``VideoSource``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .capture import VideoSource
from .urls import default_name, source_kind

__all__ = ["SourceConfig"]

_ENV = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    source: str = Field(
        min_length=1,
        max_length=4096,
        description="rtsp://host[:port]/path, http(s)://host/mjpeg, /dev/videoN (V4L2) or a video file (relative to "
        "the config file). No password in the URL: use password_env.",
    )
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="The source's name ({1} in the route's topics); default: from the source.",
    )
    fps: float | None = Field(
        5.0,
        gt=0,
        le=120,
        description="Frames per second delivered to the model (newest only); None: every frame the source produces.",
    )
    realtime: bool = Field(
        True, description="Files: replay at their own speed (true) or as fast as the model takes frames (false)."
    )
    loop: bool = Field(False, description="Files: start again from the beginning at the end.")
    username_env: str | None = Field(None, pattern=_ENV, description="Environment variable holding the user name.")
    password_env: str | None = Field(None, pattern=_ENV, description="Environment variable holding the password.")
    open_timeout_s: float = Field(10.0, gt=0, le=120, description="Longest wait to open the source.")
    read_timeout_s: float = Field(10.0, gt=0, le=120, description="A stream silent this long is reopened.")
    reconnect_initial_s: float = Field(0.5, gt=0, le=60, description="First wait before reopening a failed source.")
    reconnect_max_s: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between attempts (the wait doubles up to it)."
    )

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        kind = source_kind(value)  # ValueError names the supported kinds
        if kind in ("rtsp", "http"):
            try:
                parts = urlsplit(value)
                _ = parts.port  # raises for a port that is not a number
            except ValueError as err:
                raise ValueError(f"bad URL: {err}") from None
            if not parts.hostname:
                raise ValueError("no host in the source URL")
            if parts.password is not None:
                raise ValueError(
                    "put the password in an environment variable and name it in password_env, not in the source URL"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceConfig:
        kind = source_kind(self.source)
        set_keys = self.model_fields_set
        if kind != "file":
            for key in ("realtime", "loop"):
                if key in set_keys:
                    raise ValueError(f"{key} applies to video files only, not to a {kind} source")
        if kind in ("file", "device") and (self.username_env or self.password_env):
            raise ValueError("credentials apply to rtsp:// and http(s):// sources only")
        if self.reconnect_initial_s > self.reconnect_max_s:
            raise ValueError("reconnect_initial_s must not be above reconnect_max_s")
        return self

    @property
    def kind(self) -> str:
        return source_kind(self.source)

    @property
    def source_name(self) -> str:
        return self.name or default_name(self.source)

    def build(self, *, base_dir: Path | None = None) -> VideoSource:
        """The (not yet started) ``VideoSource``; a relative file path is taken relative to ``base_dir``."""
        source = self.source
        if self.kind == "file" and base_dir is not None and not Path(source).is_absolute():
            source = str(base_dir / source)
        return VideoSource(
            source,
            name=self.source_name,
            fps=self.fps,
            realtime=self.realtime,
            loop=self.loop,
            username_env=self.username_env,
            password_env=self.password_env,
            open_timeout=self.open_timeout_s,
            read_timeout=self.read_timeout_s,
            backoff_initial=self.reconnect_initial_s,
            backoff_max=self.reconnect_max_s,
        )
