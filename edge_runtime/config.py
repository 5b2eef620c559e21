"""The runtime's config: one TOML file, validated as a whole on load.

Every error names the key (``routes[0].max_batch``) and, where it can be found, the line, so that
``edge-runtime run CONFIG --validate-config`` points at what to fix.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import ssl
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import ConfigError
from .fleet.config import FleetConfig
from .monitoring.config import MonitoringFields, check_monitoring
from .sources.config import SourceConfig
from .topics import TopicFilter, TopicPattern, TopicTemplate, capture_patterns, template_pattern
from .tracking.config import TrackingConfig
from .vocabulary import Overflow

if TYPE_CHECKING:
    from .bundle.signing import TrustedKeys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "Config",
    "BrokerConfig",
    "DeviceConfig",
    "MetricsConfig",
    "ModelConfig",
    "RouteConfig",
    "TrustConfig",
    "load_config",
    "parse_config",
    "config_warnings",
]

log = logging.getLogger("edge_runtime.config")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BrokerConfig(_Strict):
    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host:port, or mqtts://host:port for TLS.")
    client_id: str = Field(
        "edge-runtime",
        min_length=1,
        max_length=128,
        description="MQTT client id; unique per broker. Part of the runtime's topics "
        "(edge-runtime/<client_id>/...), so without +, #, / or NUL.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        "5",
        description="MQTT version. 5 gives response topics, content types and session expiry; 3.1.1 costs "
        "less per message in paho. A broker without v5 is detected and served with 3.1.1 anyway.",
    )
    share_group: str = Field(
        "edge-runtime",
        min_length=1,
        max_length=64,
        pattern=r"^[^/+#]+$",
        description="Shared-subscription group that `run --workers N` (and a fleet) serves routes through.",
    )
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive interval in seconds.")
    username: str | None = Field(None, description="User name for the broker, if it asks for one.")
    password_env: str | None = Field(
        None, description="Name of the environment variable that holds the password (never the password itself)."
    )
    ca_file: Path | None = Field(
        None, strict=False, description="CA certificate (PEM) for mqtts:// only; the system's CAs when absent."
    )
    cert_file: Path | None = Field(
        None, strict=False, description="Client certificate (PEM) for mutual TLS: mqtts:// only, with key_file."
    )
    key_file: Path | None = Field(
        None, strict=False, description="Client private key (PEM) for mutual TLS, with cert_file."
    )
    session_expiry_s: int = Field(
        3600,
        ge=0,
        le=2**32 - 1,
        description="How long the broker keeps our session (and queued QoS 1 inputs) while we are away. "
        "Not 0 with qos 1 routes on MQTT v5.",
    )
    receive_maximum: int = Field(
        1024,
        ge=1,
        le=65535,
        description="QoS 1 inputs the broker may send before we acknowledge (MQTT v5): at least the largest "
        "max_batch of the qos 1 routes, or batches starve.",
    )
    max_outgoing: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Results held while the broker is away; beyond it they are dropped and counted (never silently). "
        "At least the largest max_batch of the routes.",
    )
    max_outgoing_bytes: int | None = Field(
        None,
        ge=1 << 16,
        le=1 << 34,
        description="Bytes of messages held to send (results, errors, snapshots, status, events) while the broker "
        "is slow or away; default: the device profile's outgoing budget. Results wait (no batch is served while "
        "they would not fit); QoS 0 answers and side messages beyond it are dropped and counted.",
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=600, description="How long to wait for the broker at start.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"use mqtt://host:port or mqtts://host:port, not {value!r}")
        if not parts.hostname:
            raise ValueError(f"no host in {value!r}")
        try:
            port = parts.port  # urlsplit checks the port only when it is read
        except ValueError as err:
            raise ValueError(f"bad port in {value!r}") from err
        if port == 0:
            raise ValueError(f"port 0 is not a broker's port, in {value!r} (1883 for mqtt://, 8883 for mqtts://)")
        return value

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        bad = sorted({c for c in value if c in "+#/\x00"})
        if bad:
            shown = ", ".join("NUL" if c == "\x00" else c for c in bad)
            raise ValueError(
                f"a client id cannot contain {shown}: it is a level of the runtime's topics "
                "(edge-runtime/<client_id>/control would become a wildcard or change depth)"
            )
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> BrokerConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        return self

    @field_validator("ca_file", "cert_file")
    @classmethod
    def _tls_only(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")
        if value is not None and url is not None and urlsplit(url).scheme != "mqtts":
            raise ValueError(f"{info.field_name} is for TLS: use an mqtts:// url (or drop it)")
        return value

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for an mqtts:// url (None for mqtt://); every client of the project gets it here.

        Raises ConfigError naming the key when a file is missing or is not what it should be.
        """
        if not self.tls:
            return None
        for key in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ConfigError(f"no such file: {path}", key=f"broker.{key}")
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (ssl.SSLError, OSError) as err:
            raise ConfigError(
                f"{self.ca_file} is not a CA certificate in PEM format ({_ssl_reason(err)})", key="broker.ca_file"
            ) from None
        if self.cert_file and self.key_file:
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (ssl.SSLError, OSError) as err:
                raise ConfigError(
                    f"{self.cert_file} and {self.key_file} are not a certificate and its private key in PEM format "
                    f"({_ssl_reason(err)})",
                    key="broker.cert_file",
                ) from None
        return context

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    def password(self) -> str | None:
        if not self.password_env:
            return None
        value = os.environ.get(self.password_env)
        if value is None:
            raise ConfigError(f"environment variable {self.password_env} is not set", key="broker.password_env")
        return value


def _ssl_reason(err: BaseException) -> str:
    return getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)


class ModelConfig(_Strict):
    name: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$", description="Name that routes refer to; unique."
    )
    bundle: Path = Field(
        strict=False, description="Bundle directory (model.onnx + manifest.json), relative to the config file."
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=64,
        description="ONNX Runtime intra-op threads; default: the device profile's (one per worker with --workers).",
    )
    signing_key_env: str | None = Field(
        None,
        description="Environment variable holding the HMAC key; when set, the bundle must carry a valid signature.",
    )
    warmup: bool = Field(
        True, description="Run one inference per batch size at start so the first real request is not slow."
    )
    watch: bool = Field(
        True,
        description="Reload when the bundle directory is swapped for a new one (checked every 2 s). A reload can "
        "also be asked for on the control topic; a bad new bundle leaves the old model serving.",
    )


class RouteConfig(_Strict, MonitoringFields, TrackingConfig):
    subscribe: str | None = Field(
        None,
        description="MQTT topic filter (+ and # wildcards, $share/<group>/ allowed). A route takes `subscribe` or "
        "`source`, not both; two routes cannot subscribe to the same filter.",
    )
    source: str | None = Field(
        None,
        description="Read frames from a camera instead of MQTT: rtsp://..., http(s)://... (MJPEG), /dev/videoN "
        "or a video file (relative to the config file). {1} in the topics is the source's name. Instead of "
        "`subscribe`.",
    )
    source_name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Sources: the source's name ({1} in the topics); default: from the source.",
    )
    fps: float | None = Field(
        5.0, gt=0, le=120, description="Sources: frames per second taken from the source (newest only)."
    )
    realtime: bool = Field(True, description="Video files: their own speed (true) or as fast as served (false).")
    loop: bool = Field(False, description="Video files: start again at the end.")
    username_env: str | None = Field(
        None, description="rtsp:// and http(s):// sources: environment variable holding the user name."
    )
    password_env: str | None = Field(
        None, description="rtsp:// and http(s):// sources: environment variable holding the password."
    )
    model: str = Field(description="Name of a [[models]] entry.")
    publish: str = Field(
        description="Result topic; {1}..{n} are what the filter's wildcards matched, {topic} the input topic. "
        "Refused when it (or the error, snapshot or event topics) can match any route's filter: answers would "
        "come back as inputs."
    )
    errors: str | None = Field(
        None, description="Error topic (same placeholders); default: the result topic + '/error'."
    )
    max_batch: int = Field(
        32, ge=1, le=4096, description="A batch closes at this many rows, or max_delay_ms after its first row."
    )
    max_delay_ms: float = Field(
        2.0,
        ge=0,
        le=60_000,
        description="A batch closes this long after its first row, or at max_batch rows. 0: take what is waiting.",
    )
    qos: int = Field(
        0,
        description="QoS of the subscription and of the results: 0, or 1 (nothing acknowledged before its result is "
        "safe). 2 is refused: see the README.",
    )
    max_queue: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Inputs waiting at most; beyond it `overflow` applies. Default: the device profile's.",
    )
    max_queue_bytes: int | None = Field(
        None,
        ge=1024,
        le=16 * 1024**3,
        description="Payload bytes waiting at most; beyond it `overflow` applies. Default: the device profile's "
        "queue budget shared among the routes.",
    )
    reply_to: list[str] = Field(
        default_factory=list,
        description="Topic filters an MQTT v5 response topic must match to be answered there; default: none (results "
        "always go to this route's own topics, whatever a client asks).",
    )
    overflow: Overflow = Field(
        "drop_oldest",
        description="Under overload: drop_oldest, reject (answer on the error topic), or latest_only (keep only "
        "the newest waiting input per input topic, e.g. per camera).",
    )
    deadline_ms: float | None = Field(
        None,
        gt=0,
        le=3_600_000,
        description="Inputs that waited longer than this are dropped (counted), not served late. Above "
        "max_delay_ms; default: no deadline.",
    )
    max_payload_bytes: int = Field(
        1_000_000, ge=1, le=256 * 1024 * 1024, description="Larger inputs are refused before decoding."
    )
    snapshot: str | None = Field(
        None,
        description="Image routes: also publish each frame with its detections drawn, as JPEG, on this topic "
        "(same placeholders). Off by default: it costs an encode per frame.",
    )

    @field_validator("subscribe")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None:
            TopicFilter(value)
        return value

    @model_validator(mode="after")
    def _input(self) -> RouteConfig:
        if (self.subscribe is None) == (self.source is None):
            raise ValueError("a route takes its inputs from `subscribe` (MQTT) or from `source` (a camera): give one")
        if self.source is not None:
            self.source_config()  # its checks, as one-line errors
        else:
            video_keys = {
                "source_name",
                "fps",
                "realtime",
                "loop",
                "username_env",
                "password_env",
            } & self.model_fields_set
            if video_keys:
                raise ValueError(f"{sorted(video_keys)[0]} applies to a route with a `source`")
        return self

    def source_config(self) -> SourceConfig | None:
        """The route's video source settings, or None for an MQTT route."""
        if self.source is None:
            return None
        given = {
            "source_name": "name",
            "fps": "fps",
            "realtime": "realtime",
            "loop": "loop",
            "username_env": "username_env",
            "password_env": "password_env",
        }
        # Only the keys the route sets: SourceConfig says which apply to which kind of source.
        return SourceConfig(
            source=self.source, **{given[k]: getattr(self, k) for k in given if k in self.model_fields_set}
        )

    @property
    def name(self) -> str:
        """What metrics and logs call the route: its filter, or ``source:<name>``."""
        if self.subscribe is not None:
            return self.subscribe
        source = self.source_config()
        assert source is not None
        return f"source:{source.source_name}"

    @property
    def wildcards(self) -> int:
        """How many ``{n}`` placeholders the route's topics may use (a source's name is ``{1}``)."""
        return 1 if self.subscribe is None else TopicFilter(self.subscribe).wildcards

    @field_validator("reply_to")
    @classmethod
    def _reply_filters(cls, value: list[str]) -> list[str]:
        for text in value:
            if text.startswith("$share/"):
                raise ValueError(f"reply_to takes topic filters, not shared subscriptions: {text!r}")
            TopicFilter(text)
        return value

    @field_validator("qos")
    @classmethod
    def _qos(cls, value: int) -> int:
        if value == 2:
            raise ValueError(
                "qos 2 is not supported: use qos = 1 (nothing is acknowledged before its result is safe; "
                "results carry the input's id, so a consumer drops the rare repeat)"
            )
        if value not in (0, 1):
            raise ValueError(f"qos is 0 or 1, not {value}")
        return value

    @field_validator("deadline_ms")
    @classmethod
    def _deadline(cls, value: float | None, info: ValidationInfo) -> float | None:
        delay = info.data.get("max_delay_ms")
        if value is not None and delay is not None and value <= delay:
            raise ValueError(
                f"deadline_ms ({value:g}) must be above max_delay_ms ({delay:g}): otherwise an input can expire "
                "while its batch is still filling"
            )
        return value

    @field_validator("publish", "errors", "snapshot")
    @classmethod
    def _template(cls, value: str | None, info: ValidationInfo) -> str | None:
        subscribe = info.data.get("subscribe")
        if value is not None and subscribe is not None:
            TopicTemplate(value, wildcards=TopicFilter(subscribe).wildcards)
        elif value is not None and info.data.get("source") is not None:
            TopicTemplate(value, wildcards=1)
        return value

    @property
    def error_topic(self) -> str:
        return self.errors if self.errors is not None else self.publish + "/error"


class MetricsConfig(_Strict):
    interval_s: float = Field(10.0, ge=0, le=86_400, description="Publish the runtime's metrics this often; 0: never.")
    topic: str | None = Field(
        None,
        description="Metrics topic: a plain topic (no +, #, or leading $); default: edge-runtime/<client_id>/metrics.",
    )
    prometheus_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="Serve the same metrics for Prometheus on this port (needs the [prometheus] extra). With "
        "`run --workers N`, worker i serves on prometheus_port + i - 1 (one endpoint per worker; at most 65535).",
    )
    prometheus_host: str = Field(
        "127.0.0.1", description="Address the Prometheus endpoint binds to (0.0.0.0 to expose it)."
    )

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not value or any(c in value for c in "+#\x00"):
            raise ValueError("a metrics topic is a plain topic name, without wildcards (+, #) or NUL")
        if len(value.encode()) > _MAX_TOPIC_BYTES:
            raise ValueError(f"a metrics topic is at most {_MAX_TOPIC_BYTES} bytes (MQTT's limit)")
        if value.startswith("$"):
            raise ValueError("topics starting with $ are the broker's ($SYS...): choose another metrics topic")
        return value


_MAX_TOPIC_BYTES = 65_535


class DeviceConfig(_Strict):
    profile: str | None = Field(None, description="Device profile (`edge-runtime devices list`); default: detected.")
    state_dir: Path | None = Field(
        None,
        strict=False,
        description="Where the runtime keeps what must outlive a restart (the filters its broker session holds, so "
        "that those a new config drops are unsubscribed). Default: $STATE_DIRECTORY (systemd's StateDirectory=), "
        "else $XDG_STATE_HOME/edge-runtime, else ~/.local/state/edge-runtime. Unwritable: a warning, and serving "
        "goes on.",
    )

    @field_validator("profile")
    @classmethod
    def _known(cls, value: str | None) -> str | None:
        if value is not None:
            from devices.detect import profile_for

            try:
                profile_for(value)
            except LookupError as err:  # pydantic reports ValueErrors with the key and line
                raise ValueError(str(err)) from None
        return value


class HomeAssistantConfig(_Strict):
    discovery: bool = Field(
        False,
        description="Announce each result topic to Home Assistant (MQTT discovery) on its first result, and each "
        "tracked camera's events, zones and lines when its tracker starts; all under one device per runtime.",
    )
    prefix: str = Field(
        "homeassistant", min_length=1, pattern=r"^[^+#]+$", description="Home Assistant's discovery prefix."
    )
    remove_after_s: float = Field(
        7 * 86_400,
        ge=1,
        le=10 * 365 * 86_400,
        description="Remove a result topic's (or camera's) entities from Home Assistant once nothing was published "
        "there for this long (an empty retained config); announced again on its next result. Default: a week.",
    )


class TrustConfig(_Strict):
    public_keys: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Ed25519 public keys this device trusts: .pub files written by `edge-runtime keys new` (relative "
        "to the config file) or ed25519:<base64>. When given, every bundle must be signed by one of them "
        "(`edge-runtime sign DIR --key FILE`), and so must fleet releases.",
    )

    def trusted(self) -> TrustedKeys | None:
        """The keys, read and checked (ConfigError naming trust.public_keys otherwise); None when none are given."""
        if not self.public_keys:
            return None
        from .bundle.signing import TrustedKeys, read_public_key

        try:
            return TrustedKeys(read_public_key(k) for k in self.public_keys)
        except ConfigError as err:
            raise ConfigError(err.message, key="trust.public_keys") from None


class Config(_Strict):
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="The MQTT broker and how to connect to it.")
    device: DeviceConfig = Field(
        default_factory=DeviceConfig,
        description="The board the runtime runs on: its profile gives the defaults of ONNX Runtime's threads, "
        "max_queue and the queue byte budget.",
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig,
        description="The runtime's own metrics, published on MQTT and, if asked for, served for Prometheus.",
    )
    homeassistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig,
        description="Home Assistant MQTT discovery of the result topics and tracked cameras.",
    )
    trust: TrustConfig = Field(
        default_factory=TrustConfig,
        description="Public keys that bundles and fleet releases must be signed with (Ed25519): a device holds "
        "no secret that could sign a model.",
    )
    fleet: FleetConfig | None = Field(
        None,
        description="Model releases delivered over MQTT to a group of devices, tried on canaries and promoted or "
        "rolled back on the device (README: Fleet releases). Needs [trust] public_keys.",
    )
    models: Annotated[list[ModelConfig], Field(min_length=1)] = Field(
        description="The models to serve: one entry per model bundle."
    )
    routes: Annotated[list[RouteConfig], Field(min_length=1)] = Field(
        description="What to serve: each route takes inputs from an MQTT topic filter or a camera, runs one model on "
        "them in batches and publishes the results."
    )


def parse_config(text: str, *, path: str = "config", base_dir: Path | None = None) -> Config:
    """Parse and validate TOML text. Relative paths are resolved against ``base_dir``."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = getattr(err, "lineno", None) or _line_from_message(str(err))
        raise ConfigError(f"not valid TOML: {err}", path=path, line=line) from err
    try:
        config = Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = _dotted(first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = _unknown_key(first["loc"])
        elif first["type"] == "missing":
            message = "missing: this key is required"
        raise ConfigError(message, path=path, key=key or None, line=_find_line(text, first["loc"])) from err
    _check_references(config, text, path)
    for loc, message in config_warnings(config):
        log.warning("%s", ConfigError(message, path=path, key=_dotted(loc), line=_find_line(text, loc)))
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    try:
        config.broker.tls_context()  # missing or broken certificate files: said now, not at the first connect
        config.trust.trusted()  # and key files
    except ConfigError as err:
        loc = tuple(err.key.split(".")) if err.key else ()
        raise ConfigError(err.message, path=path, key=err.key, line=_find_line(text, loc)) from None
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError naming the key and line on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}", path=str(p)) from err
    return parse_config(text, path=str(p), base_dir=p.resolve().parent)


def _check_references(config: Config, text: str, path: str) -> None:
    """Checks across tables, reported like field errors: with the key and its line."""

    def refuse(loc: tuple[str | int, ...], message: str) -> NoReturn:
        raise ConfigError(message, path=path, key=_dotted(loc), line=_find_line(text, loc))

    seen: set[str] = set()
    for i, model in enumerate(config.models):
        if model.name in seen:
            refuse(("models", i, "name"), f"model name {model.name!r} is used twice; names must be unique")
        seen.add(model.name)
    subscribed: dict[str, int] = {}
    sources: dict[str, int] = {}
    for i, route in enumerate(config.routes):
        if route.model not in seen:
            refuse(("routes", i, "model"), f"no model named {route.model!r}; defined: {', '.join(sorted(seen))}")
        problem = check_monitoring(route, route.model, seen)
        if problem is not None:
            refuse(("routes", i, "shadow"), problem.removeprefix("shadow: "))
        if route.subscribe is not None and route.subscribe in subscribed:
            refuse(
                ("routes", i, "subscribe"),
                f"routes[{subscribed[route.subscribe]}] already subscribes to {route.subscribe!r}: the broker "
                "keeps one subscription per filter, so one of the two would never see an input; merge them",
            )
        if route.subscribe is not None:
            subscribed[route.subscribe] = i
        elif route.name in sources:  # "source:<name>": the name is {1} in topics, a metric label, a status key
            refuse(
                ("routes", i, "source_name" if "source_name" in route.model_fields_set else "source"),
                f"routes[{sources[route.name]}] reads a source named {route.name.removeprefix('source:')!r} too "
                "(a default name is the host and the path without parameters): set source_name on one of them",
            )
        else:
            sources[route.name] = i
    _check_loops(config, refuse)
    fleet = config.fleet
    if fleet is not None:
        if not config.trust.public_keys:
            refuse(
                ("fleet", "group"),
                "a fleet needs [trust] public_keys: releases are accepted only when signed by a key the device "
                "trusts (make one with `edge-runtime keys new`)",
            )
        unknown = sorted(set(fleet.models or ()) - seen)
        if unknown:
            refuse(("fleet", "models"), f"no model named {unknown[0]!r}; defined: {', '.join(sorted(seen))}")
    broker = config.broker
    i, widest = max(enumerate(config.routes), key=lambda ir: ir[1].max_batch)
    if broker.max_outgoing < widest.max_batch:
        refuse(
            ("broker", "max_outgoing"),
            f"{broker.max_outgoing} is below routes[{i}].max_batch ({widest.max_batch}): a batch is served only "
            "when all its results fit in the outgoing queue, so that route would never be served; "
            f"raise it to at least {widest.max_batch}",
        )
    reliable = [(i, r) for i, r in enumerate(config.routes) if r.qos == 1]
    if broker.protocol == "5" and reliable:
        if broker.session_expiry_s == 0:
            refuse(
                ("broker", "session_expiry_s"),
                f"0 with qos 1 routes (routes[{reliable[0][0]}]): the broker would drop the session, and the "
                "inputs it holds, whenever the runtime restarts; keep the default (3600) or use qos 0",
            )
        i, widest = max(reliable, key=lambda ir: ir[1].max_batch)
        if broker.receive_maximum < widest.max_batch:
            refuse(
                ("broker", "receive_maximum"),
                f"{broker.receive_maximum} is below routes[{i}].max_batch ({widest.max_batch}): the broker stops "
                "sending qos 1 inputs at receive_maximum unacknowledged ones, so that batch could never fill; "
                f"raise it to at least {widest.max_batch}",
            )


def _answer_topics(route: RouteConfig) -> list[tuple[str, str, TopicPattern]]:
    """(key, template, the topics it can render) for every topic the route publishes on: results, errors,
    snapshots and, when tracking, events, zones and lines (one pattern per zone or line name)."""
    if route.subscribe is not None:
        flt = TopicFilter(route.subscribe)
        values = capture_patterns(flt)
        camera = values["1"] if flt.wildcards else values["topic"]  # a camera is {1}, else the whole topic
    else:
        name = route.source_config().source_name  # type: ignore[union-attr]  # a route without subscribe has one
        values = {"1": (name,), "topic": (name,)}
        camera = (name,)
    tracking = {**values, "1": camera, "source": camera}
    out = [("publish", route.publish, template_pattern(route.publish, values))]
    out.append(("errors", route.error_topic, template_pattern(route.error_topic, values)))
    if route.snapshot is not None:
        out.append(("snapshot", route.snapshot, template_pattern(route.snapshot, values)))
    if route.track:
        out.append(("events", route.events, template_pattern(route.events, tracking)))
        for key, text, names, placeholder in [
            ("occupancy", route.occupancy, [z.name for z in route.zones], "zone"),
            ("counts", route.counts, [ln.name for ln in route.lines], "line"),
        ]:
            if text is not None:
                out += [(key, text, template_pattern(text, {**tracking, placeholder: (n,)})) for n in names]
    return out


def _check_loops(config: Config, refuse: Callable[[tuple[str | int, ...], str], NoReturn]) -> None:
    """No route may publish where a route subscribes: its answers would come back as inputs, forever if
    the answer to an answer lands there too, and anyone could start it with one message."""
    filters = [(j, r.subscribe, TopicFilter(r.subscribe)) for j, r in enumerate(config.routes) if r.subscribe]
    for i, route in enumerate(config.routes):
        for key, text, pattern in _answer_topics(route):
            for j, subscribe, flt in filters:
                if flt.may_match(pattern):
                    what = (
                        f"the default error topic {text!r} (publish + '/error'; set errors)"
                        if key == "errors" and route.errors is None
                        else repr(text)
                    )
                    whose = "the route's own filter" if i == j else f"routes[{j}].subscribe"
                    refuse(
                        ("routes", i, key),
                        f"{what} can render a topic that {whose} {subscribe!r} matches: the runtime would take its "
                        "own answers as inputs, in a loop; choose a topic outside every route's filter",
                    )


def config_warnings(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    """(location, message) of each setting that is legal but risky: a topic whose first level an input's
    publisher chooses (``{1}/results`` with ``sensors/+``: a publisher on ``sensors/homeassistant`` writes
    under ``homeassistant/``)."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    for i, route in enumerate(config.routes):
        if route.subscribe is None:
            continue  # {1} is the source's name, from the config
        first = TopicFilter(route.subscribe).levels[0]
        keys = ["publish", "errors", "snapshot"] + (["events", "occupancy", "counts"] if route.track else [])
        for key in keys:
            text = getattr(route, key)
            m = re.match(r"\{([^{}]*)\}", text or "")
            if m is None or (m.group(1) == "topic" and first not in ("+", "#")):
                continue  # a fixed first level ({topic} starts with the filter's own first level)
            out.append(
                (
                    ("routes", i, key),
                    f"{text!r} starts with {{{m.group(1)}}}: whoever publishes on {route.subscribe!r} chooses the "
                    "first level of the topic answers go to; start it with a fixed level, e.g. "
                    f"'results/{text}'",
                )
            )
    return out


def _resolve_paths(config: Config, base: Path) -> Config:
    def absolute(value: Path | None) -> Path | None:
        return value if value is None or value.is_absolute() else base / value

    broker = config.broker.model_copy(
        update={k: absolute(getattr(config.broker, k)) for k in ("ca_file", "cert_file", "key_file")}
    )
    models = [m.model_copy(update={"bundle": absolute(m.bundle)}) for m in config.models]
    keys = [k if k.startswith("ed25519:") else str(absolute(Path(k))) for k in config.trust.public_keys]
    trust = config.trust.model_copy(update={"public_keys": keys})
    fleet = config.fleet.model_copy(update={"dir": absolute(config.fleet.dir)}) if config.fleet else None
    routes = []
    for r in config.routes:
        update: dict[str, object] = {}
        if r.capture is not None:
            update["capture"] = r.capture.model_copy(update={"dir": absolute(r.capture.dir)})
        source = r.source_config()
        if source is not None and source.kind == "file" and not Path(r.source or "").is_absolute():
            update["source"] = str(base / (r.source or ""))
        routes.append(r.model_copy(update=update) if update else r)
    device = config.device.model_copy(update={"state_dir": absolute(config.device.state_dir)})
    return config.model_copy(
        update={"broker": broker, "device": device, "models": models, "routes": routes, "trust": trust, "fleet": fleet}
    )


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    """The message for a key no table of that name takes: the closest key it does take, or all of them when few."""
    model: type[BaseModel] = Config
    table = ""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = _nested_table(field.annotation) if field is not None else None
        if nested is None:  # not a table of ours: say no more than that the key is unknown
            return "unknown key (check the spelling; CONFIG.md lists the keys each table takes)"
        model, array = nested
        path = f"{table.strip('[]')}.{part}" if table else part
        table = f"[[{path}]]" if array else f"[{path}]"
    where = table or "the top level"
    keys = list(model.model_fields)
    key = str(loc[-1])
    close = difflib.get_close_matches(key, keys, n=1)
    if not close:  # `high` for high_score: a unique key it begins
        close = [k for k in keys if k.startswith(key)][:2]
    if len(close) == 1:
        return f"unknown key: did you mean {close[0]}? (CONFIG.md lists the keys {where} takes)"
    if len(keys) <= 8:
        return f"unknown key: {where} takes {', '.join(keys)} (see CONFIG.md)"
    return f"unknown key (check the spelling; CONFIG.md lists the keys {where} takes)"


def _nested_table(annotation: object) -> tuple[type[BaseModel], bool] | None:
    """The model of a table-valued field, and whether it is an array of tables; None for a plain key."""
    if get_origin(annotation) in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _nested_table(inner[0]) if len(inner) == 1 else None
    if get_origin(annotation) is list:
        item = _nested_table(get_args(annotation)[0])
        return (item[0], True) if item is not None and not item[1] else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_from_message(message: str) -> int | None:
    m = re.search(r"line (\d+)", message)
    return int(m.group(1)) if m else None


def _find_line(text: str, loc: tuple[str | int, ...]) -> int | None:
    """Best effort: the line of the table (or array-of-tables entry) and key that ``loc`` names."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    parts = list(loc)
    if parts and isinstance(parts[0], str) and len(parts) > 1:
        table, rest = parts[0], parts[1:]
        index: int | None = None
        if rest and isinstance(rest[0], int):
            index, rest = rest[0], rest[1:]
        header = (
            re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
            if index is not None
            else re.compile(rf"^\s*\[\s*{re.escape(table)}\s*\]")
        )
        hits = [i for i, line in enumerate(lines) if header.match(line)]
        pick = index if index is not None else 0
        if pick >= len(hits):
            return None
        start = hits[pick]
        nxt = [i for i, line in enumerate(lines) if i > start and re.match(r"^\s*\[", line)]
        end = nxt[0] if nxt else len(lines)
        keys = [p for p in rest if isinstance(p, str)]
    else:
        keys = [p for p in parts if isinstance(p, str)]
    if keys:
        key_re = re.compile(rf"^\s*{re.escape(keys[0])}\s*=")
        for i in range(start, end):
            if key_re.match(lines[i]):
                return i + 1
    return start + 1 if end != len(lines) or start else None
