"""The device's fleet agent: follows its group's releases, downloads, verifies, tries and promotes or rolls back.

One thread of its own with its own MQTT connection (``transport``); the runtime is reached only through
``Host``. For each model it may replace, the agent keeps a state (``store.ModelState``, on disk) and
moves it along:

    a signed record arrives ──> refused (not signed by a trusted key, a replay, not newer, too large)
         │ accepted
         v
    waiting (not a canary: until the canaries promoted it) ──> skipped (a device rolled it back)
         │
         v
    downloading (chunks by subscription, bandwidth-bounded; resumes from the chunks on disk)
         │ every chunk checked against the record, then the whole archive
         v
    unpacked and verified as any bundle (its own signature included), loaded and warmed up
         │
         ├── canary, or the plan says the rest judge too ──> shadowing ──> promoted | rolled_back | inconclusive
         └── otherwise ──> promoted

Decisions come from ``judge`` (pure rules); every verdict is published, retained, on the release's verdict
topic (how the rest of the fleet learns of it), and the device's desired and actual state on
``edge-runtime/<client_id>/models``. Refused records and chunks are reported there and on the alerts topic.

Safe at every step: the state file is replaced in one rename; a version becomes live in the state only
once it serves; a download resumes from the chunks on disk; at start (``live_bundles``) the live version
is verified again, and the previous one (or the configured bundle) serves if it does not pass. Nothing
that arrives on the network raises out of the agent's loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from ..bundle import load_bundle
from ..bundle.signing import TrustedKeys
from ..config import BrokerConfig
from ..errors import EdgeRuntimeError, ReleaseError, first_line
from ..observability.ratelog import RateLimitedLog
from ..topics import MAX_TOPIC_BYTES
from ._faults import kill_point
from .archive import unpack_archive
from .config import FleetConfig
from .host import Host
from .judge import Decision, Observation, fleet_decision, is_canary, judge
from .record import (
    CHUNK_HEADER,
    MAX_RECORD_BYTES,
    ReleaseRecord,
    Verdict,
    chunk_topic,
    models_topic,
    read_chunk,
    read_record,
    release_filter,
    verdict_filter,
    verdict_topic,
    version_key,
)
from .store import DeviceState, FleetStore, Installed, ModelState, Phase
from .transport import Message, Transport, connect_forever

__all__ = ["FleetAgent", "live_bundles"]

log = logging.getLogger("edge_runtime.fleet")

_MAX_VERDICTS = 10_000  # verdicts kept per release: strangers can invent device ids
_JUDGE_EVERY_S = 0.25
_STATE_EVERY_S = 1.0  # progress at most this often; a change of phase at once
_RETRY_FIRST_S, _RETRY_MAX_S = 1.0, 30.0  # a refused chunk is asked for again after this, doubling
_ALERT_EVERY_S = 0.2  # refusals on the alerts topic at most this often per model (all are counted)


def _store(config: FleetConfig) -> FleetStore:
    if config.dir is None:  # the runtime fills it in from [device] state_dir (serving/fleet_host.py)
        raise ValueError("the fleet directory must be resolved before the agent starts")
    return FleetStore(config.dir, max_bytes=int(config.max_disk_mb * 1e6))


def live_bundles(config: FleetConfig, configured: Mapping[str, Path], trusted: TrustedKeys) -> dict[str, Path]:
    """At start, before any engine is loaded: the bundle each managed model serves.

    The live version from the state if it verifies, else the previous one, else the configured bundle; a
    fallback is written to the state (and said in its note), so the device serves a verified version
    whatever was interrupted.
    """
    store = _store(config)
    state = store.load_state()
    out: dict[str, Path] = {}
    changed = False
    for name, bundle in configured.items():
        ms = state.models.get(name)
        if ms is None or ms.live is None:
            continue
        for kept in (ms.live, ms.previous):
            if kept is None:
                continue
            try:
                load_bundle(kept.path, trusted_keys=trusted)
            except EdgeRuntimeError as err:
                log.error("fleet: model %s version %s does not verify (%s); falling back", name, kept.version, err)
                continue
            if kept is not ms.live:
                ms.note = f"version {ms.live.version} did not verify at start; serving {kept.version}"
                ms.live, ms.previous, changed = kept, None, True
            if kept.release is not None:
                out[name] = Path(kept.path)
            break
        else:
            ms.note = f"no kept version verified at start; serving the configured bundle {bundle}"
            ms.live = ms.previous = None
            changed = True
    if changed:
        store.save_state(state)
    return out


@dataclass
class _Work:
    """What the agent does for one model now (not persisted: rebuilt from the state at start)."""

    record: ReleaseRecord | None = None
    canary: bool = False
    have: set[int] = field(default_factory=set)
    asked: dict[int, float] = field(default_factory=dict)  # chunk -> when it is asked for again
    retry_at: dict[int, float] = field(default_factory=dict)  # refused chunks: not before
    backoff: dict[int, float] = field(default_factory=dict)
    candidate: object | None = None
    bundle: Path | None = None
    shadow_since: float | None = None
    next_judgement: float = 0.0
    last_report: dict[str, Any] | None = None
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    resumed_from: int = 0  # chunks on disk when the download (re)started
    fetched: int = 0  # chunk messages taken (duplicates included)


class FleetAgent:
    """Follows the releases of ``config.group`` for the models in ``models`` (name -> configured bundle)."""

    def __init__(
        self,
        config: FleetConfig,
        *,
        device: str,
        broker: BrokerConfig,
        trusted: TrustedKeys,
        host: Host,
        models: Mapping[str, Path],
    ):
        self.config, self.device, self.trusted, self.host = config, device, trusted, host
        self.models = dict(models)
        self.store = _store(config)
        self.state: DeviceState = DeviceState()
        self.work: dict[str, _Work] = {name: _Work() for name in self.models}
        chunk_bytes = config.max_chunk_kb * 1024
        self.max_packet = chunk_bytes + CHUNK_HEADER + MAX_TOPIC_BYTES + 8192
        self.transport = Transport(
            broker.model_copy(update={"client_id": f"{device}-fleet"}),
            max_packet=max(self.max_packet, MAX_RECORD_BYTES + MAX_TOPIC_BYTES),
            inbox_bytes=(config.chunk_window + 2) * self.max_packet + 2 * MAX_RECORD_BYTES,
        )
        self._rate = config.max_download_kb_s * 1024
        self._tokens, self._tokens_at = float(chunk_bytes), time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edge-runtime-fleet", daemon=True)
        self._ratelog = RateLimitedLog(log)
        self._state_due = 0.0
        self._state_dirty = True
        self._alert_due: dict[str, float] = {}
        self.counters: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.transport.close()

    def _run(self) -> None:
        try:
            self.state = self.store.load_state()
            self._recover()
        except Exception:  # the agent must never take the runtime down
            log.exception("fleet: recovering the rollout state failed; the live models go on serving")
        if not connect_forever(self.transport, self._stop):
            return
        self.transport.subscribe(release_filter(self.config.group))
        while not self._stop.is_set():
            message = self.transport.get(_JUDGE_EVERY_S)
            try:
                if message is not None:
                    self._handle(message)
                self._tick()
            except Exception:  # noqa: BLE001 - whatever arrives, the loop goes on
                self._ratelog.log("agent", "fleet: handling a message failed", exc_info=True)
        self._publish_state(force=True)
        self.transport.drain(1.0)

    def _count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    # -- recovery at start ------------------------------------------------------------------

    def _recover(self) -> None:
        """Pick up where the last run stopped: a download resumes from its chunks, a shadow starts again."""
        keep_downloads: set[str] = set()
        for name in self.models:
            ms = self.state.model(name)
            if ms.candidate is None:
                self._prune(name)
                continue
            try:
                record = read_record(ms.candidate.encode(), self.trusted)
            except ReleaseError as err:
                self._finish(name, "refused", f"the release in progress cannot be read again: {err}")
                continue
            work = self.work[name]
            work.record, work.canary = record, is_canary(self.device, record.plan.canary)
            if not work.canary:
                self.transport.subscribe(verdict_filter(self.config.group, name, record.release))
            keep_downloads.add(record.release)
            if ms.phase == "shadowing" and self.store.version_dir(name, record).is_dir():
                self._install(name)
            elif ms.phase in ("downloading", "shadowing"):
                self._set_phase(name, "downloading", "resuming after a restart")
                self._start_download(name)
            self._prune(name)
        self.store.prune_downloads(keep_downloads)

    # -- messages ---------------------------------------------------------------------------

    def _handle(self, message: Message) -> None:
        if message.connected:
            self._on_connected()
            return
        parts = message.topic.split("/")
        if len(parts) < 5 or parts[:3] != ["edge-runtime", "fleet", self.config.group]:
            return
        model, kind = parts[3], parts[4]
        if model not in self.models:
            return
        if kind == "release" and len(parts) == 5:
            self._on_release(model, message.payload)
        elif kind == "chunks" and len(parts) == 7:
            self._on_chunk(model, parts[5], parts[6], message.payload)
        elif kind == "verdicts" and len(parts) == 7:
            self._on_verdict(model, parts[5], parts[6], message.payload)

    def _on_connected(self) -> None:
        now = time.monotonic()
        for name, work in self.work.items():
            for index in work.asked:  # asked again by the new connection's subscriptions
                work.asked[index] = now + self._chunk_timeout(work)
            for pending in list(self.state.model(name).pending_verdicts):
                self._publish_verdict(name, pending)
        self._state_dirty = True

    def _on_release(self, model: str, payload: bytes) -> None:
        if not payload:
            return  # the retained record was cleared
        try:
            record = read_record(payload, self.trusted)
        except ReleaseError as err:
            self._refused(model, err.release, str(err))
            return
        if record.fleet != self.config.group or record.model != model:
            self._refused(model, record.release, f"a record for {record.fleet}/{record.model} on this topic")
            return
        self._consider(model, record, payload)

    def _consider(self, model: str, record: ReleaseRecord, payload: bytes) -> None:
        ms, work = self.state.model(model), self.work[model]
        current = work.record
        if current is not None and current.release == record.release:
            return  # the retained record again
        if (ms.live is not None and ms.live.release == record.release) or record.release in ms.failed:
            return  # done with it here
        if record.issued <= ms.last_issued:
            self._refused(
                model, record.release, f"{record.label()} was issued before the last record accepted: a replay"
            )
            return
        live = self.host.live_version(model)
        if not record.downgrade and version_key(record.version) <= version_key(live):
            self._refused(
                model,
                record.release,
                f"{record.label()} is not newer than the live version {live} (a rollback must be published "
                "with --downgrade)",
            )
            return
        if current is not None and not record.downgrade and version_key(record.version) < version_key(current.version):
            self._refused(model, record.release, f"{record.label()} is older than {current.label()}, in progress")
            return
        why = self._unfit(model, record)
        if why is not None:
            self._refused(model, record.release, why, verdict=record)
            return
        if current is not None:
            self._abandon(model, f"superseded by {record.label()}")
            work = self.work[model]  # abandoning starts a new one
        ms.last_issued, ms.desired = record.issued, record.version
        ms.candidate = payload.decode()
        work.record, work.canary = record, is_canary(self.device, record.plan.canary)
        ms.canary = work.canary
        if not work.canary:  # canaries judge for themselves; the rest follow their verdicts
            self.transport.subscribe(verdict_filter(self.config.group, model, record.release))
        log.info("fleet: release %s accepted (%s)", record.label(), "canary" if work.canary else "after the canaries")
        if work.canary or record.plan.canary == 0:
            self._set_phase(model, "downloading", f"{record.label()} accepted")
            self._start_download(model)
        else:
            self._set_phase(model, "waiting", f"{record.label()}: waiting for the canaries")

    def _unfit(self, model: str, record: ReleaseRecord) -> str | None:
        if record.chunk_size > self.config.max_chunk_kb * 1024:
            return (
                f"{record.label()} has chunks of {record.chunk_size // 1024} KB, more than fleet.max_chunk_kb "
                f"({self.config.max_chunk_kb})"
            )
        work = self.work[model]
        reclaim: set[Path] = set()
        if work.record is not None:
            reclaim = {self.store.downloads / work.record.release, self.store.version_dir(model, work.record)}
        return self.store.room_for(record, reclaimable=reclaim)

    def _on_chunk(self, model: str, release: str, index_text: str, payload: bytes) -> None:
        work = self.work[model]
        record = work.record
        if record is None or record.release != release or not (index_text.isascii() and index_text.isdigit()):
            return  # a chunk of another release (asked before a change), or junk
        index = int(index_text[:9])
        if index_text != str(index) or index not in work.asked or index in work.have or not payload:
            return  # not asked for, or had already (a redelivery); an empty one was cleared
        work.fetched += 1
        self._count("chunks_fetched")
        self.transport.unsubscribe(chunk_topic(self.config.group, model, release, index))
        del work.asked[index]
        try:
            data = read_chunk(payload, record, index)
        except ReleaseError as err:
            self._count("chunks_refused")
            delay = min(work.backoff.get(index, _RETRY_FIRST_S / 2) * 2, _RETRY_MAX_S)
            work.backoff[index] = delay
            work.retry_at[index] = time.monotonic() + delay
            self._refused(model, release, f"{err}; asked again in {delay:.0f} s")
            return
        self.store.write_chunk(record, index, data)
        work.have.add(index)
        work.backoff.pop(index, None)
        self._state_dirty = True
        if len(record.chunks) > 1 and len(work.have) == (len(record.chunks) + 1) // 2:
            kill_point("download")
        if len(work.have) == len(record.chunks):
            log.info(
                "fleet: %s downloaded (%d chunks; %d were on disk already)",
                record.label(),
                len(record.chunks),
                work.resumed_from,
            )
            self._install(model)

    def _on_verdict(self, model: str, release: str, device: str, payload: bytes) -> None:
        work = self.work[model]
        record = work.record
        if record is None or record.release != release or not payload:
            return
        try:
            verdict = Verdict.model_validate(orjson.loads(payload))
        except (orjson.JSONDecodeError, ValidationError, RecursionError):
            self._count("verdicts_skipped")
            return
        if verdict.device != device or verdict.release != release:
            self._count("verdicts_skipped")
            return
        if device == self.device:
            return
        if device not in work.verdicts and len(work.verdicts) >= _MAX_VERDICTS:
            return
        work.verdicts[device] = verdict
        decision = fleet_decision(record.plan, work.verdicts.values())
        phase = self.state.model(model).phase
        if decision.action == "rollback":
            self._abandon(model, f"{record.label()}: {decision.reason}", phase="skipped", failed=True)
        elif decision.action == "promote" and phase == "waiting":
            self._set_phase(model, "downloading", f"{record.label()}: {decision.reason}")
            self._start_download(model)

    # -- downloading ------------------------------------------------------------------------

    def _start_download(self, model: str) -> None:
        work = self.work[model]
        record = work.record
        assert record is not None
        if self.store.version_dir(model, record).is_dir():  # unpacked already (a kept version, a restart)
            self._install(model)
            return
        work.have = self.store.chunks_present(record)
        work.resumed_from = len(work.have)
        work.asked.clear()
        if len(work.have) == len(record.chunks):
            self._install(model)

    def _chunk_timeout(self, work: _Work) -> float:
        size = work.record.chunk_size if work.record is not None else 0
        return 10.0 + 2 * self.config.chunk_window * size / self._rate

    def _ask_for_chunks(self, model: str, now: float) -> None:
        work = self.work[model]
        record = work.record
        assert record is not None
        for index, again in list(work.asked.items()):
            if now >= again:  # not delivered (lost with a connection, dropped when the inbox was full)
                self._count("chunks_asked_again")
                self.transport.unsubscribe(chunk_topic(self.config.group, model, record.release, index))
                del work.asked[index]
        self._tokens = min(
            self._tokens + (now - self._tokens_at) * self._rate, max(self._rate, float(record.chunk_size))
        )
        self._tokens_at = now
        for index in range(len(record.chunks)):
            if len(work.asked) >= self.config.chunk_window:
                break
            if index in work.have or index in work.asked or work.retry_at.get(index, 0.0) > now:
                continue
            size = record.chunk_length(index)
            if self._tokens < size:
                break  # the bandwidth bound: ask when the budget allows
            self._tokens -= size
            work.asked[index] = now + self._chunk_timeout(work)
            self.transport.subscribe(chunk_topic(self.config.group, model, record.release, index))

    # -- install, judge, promote, roll back -------------------------------------------------

    def _install(self, model: str) -> None:
        """The archive checked whole, unpacked, verified as a bundle and loaded; then shadowed or promoted."""
        work = self.work[model]
        record = work.record
        assert record is not None
        dest = self.store.version_dir(model, record)
        try:
            if not dest.is_dir():
                archive = self.store.assemble(record)
                unpack_archive(archive, dest, max_bytes=record.unpacked, release=record.release)
            kill_point("verify")
            candidate = self.host.load(model, dest)
        except ReleaseError as err:
            if "downloading again" in str(err):
                self.store.discard_download(record.release)
                self._set_phase(model, "downloading", str(err))
                self._start_download(model)
                return
            self._finish(model, "refused", f"{record.label()}: {err}", verdict=True)
            return
        except (EdgeRuntimeError, OSError) as err:
            self._finish(model, "refused", f"{record.label()} cannot serve here: {first_line(err, 500)}", verdict=True)
            return
        self.store.discard_download(record.release)  # the verified bundle is on disk; the chunks are not needed
        work.candidate, work.bundle = candidate, dest
        if work.canary or record.plan.rest == "shadow":
            try:
                self.host.start_shadow(model, candidate, fraction=record.plan.shadow_fraction)
            except EdgeRuntimeError as err:
                self._finish(model, "refused", f"{record.label()} cannot shadow {model}: {err}", verdict=True)
                return
            work.shadow_since = time.monotonic()
            work.next_judgement = work.shadow_since + _JUDGE_EVERY_S
            self._set_phase(model, "shadowing", f"{record.label()} runs beside version {self.host.live_version(model)}")
        else:
            self._promote(model, Decision("promote", "the canaries promoted it"))

    def _judge(self, model: str, now: float) -> None:
        work = self.work[model]
        record = work.record
        if record is None or work.shadow_since is None or now < work.next_judgement:
            return
        work.next_judgement = now + _JUDGE_EVERY_S
        report = self.host.shadow_report(model)
        if report is None:
            return
        obs = Observation(
            rows=report.rows,
            agreed=report.agreed,
            errors=report.errors,
            live_p95_ms=report.live_p95_ms,
            shadow_p95_ms=report.shadow_p95_ms,
            new_drift_alerts=report.drift_alerts,
            elapsed_s=now - work.shadow_since,
            latency_samples=report.latency_samples,
        )
        work.last_report = {
            "rows": obs.rows + obs.errors,
            "agreement": None if obs.agreement is None else round(obs.agreement, 4),
            "latency_ratio": None if obs.latency_ratio is None else round(obs.latency_ratio, 3),
        }
        self._state_dirty = True
        decision = judge(record.plan, obs)
        if decision.action == "promote":
            self._promote(model, decision)
        elif decision.action in ("rollback", "inconclusive"):
            self._roll_back(model, decision)

    def _promote(self, model: str, decision: Decision) -> None:
        work, ms = self.work[model], self.state.model(model)
        record, bundle = work.record, work.bundle
        assert record is not None and bundle is not None
        before = self.host.live_version(model)
        try:
            self.host.promote(model, work.candidate, bundle)
        except EdgeRuntimeError as err:
            self._finish(model, "refused", f"{record.label()} could not be promoted: {err}", verdict=True)
            return
        kill_point("swap")
        ms.previous = ms.live or Installed(version=before, path=str(self.models[model]))
        ms.live = Installed(version=record.version, release=record.release, path=str(bundle))
        log.info("fleet: %s promoted (%s)", record.label(), decision.reason)
        self._finish(model, "promoted", f"{record.label()} promoted: {decision.reason}", verdict=True, shadowed=False)

    def _roll_back(self, model: str, decision: Decision) -> None:
        record = self.work[model].record
        assert record is not None
        phase: Phase = "rolled_back" if decision.action == "rollback" else "inconclusive"
        log.warning("fleet: %s %s: %s", record.label(), phase.replace("_", " "), decision.reason)
        self._finish(model, phase, f"{record.label()} {phase.replace('_', ' ')}: {decision.reason}", verdict=True)

    def _finish(self, model: str, phase: Phase, note: str, *, verdict: bool = False, shadowed: bool = True) -> None:
        """The release in progress is done with: written to the state first, then its shadow dropped, its
        verdict published and what it left on disk removed."""
        work, ms = self.work[model], self.state.model(model)
        record = work.record
        pending = self._verdict(record, phase, note) if record is not None and verdict else None
        if pending is not None:
            ms.pending_verdicts.append(pending)
        if record is not None and phase != "promoted":
            self.state.remember_failed(model, record.release)
        ms.candidate = None
        self._set_phase(model, phase, note)  # saves the state
        kill_point("promoted" if phase == "promoted" else "rollback")
        if shadowed and work.shadow_since is not None:
            self.host.stop_shadow(model)
        if record is not None:
            self._release_work(model, record)
        if pending is not None:
            self._publish_verdict(model, pending)
        self._prune(model)

    def _abandon(self, model: str, note: str, *, phase: Phase = "idle", failed: bool = False) -> None:
        """Drop the release in progress without a verdict (superseded, or failed elsewhere in the fleet)."""
        work, ms = self.work[model], self.state.model(model)
        record = work.record
        if record is None:
            return
        if failed:
            self.state.remember_failed(model, record.release)
        ms.candidate = None
        self._set_phase(model, phase, note)
        if work.shadow_since is not None:
            self.host.stop_shadow(model)
        self._release_work(model, record)
        self._prune(model)

    def _release_work(self, model: str, record: ReleaseRecord) -> None:
        work = self.work[model]
        group = self.config.group
        for index in list(work.asked):
            self.transport.unsubscribe(chunk_topic(group, model, record.release, index))
        self.transport.unsubscribe(verdict_filter(group, model, record.release))
        self.store.discard_download(record.release)
        self.work[model] = _Work()

    def _prune(self, model: str) -> None:
        ms, work = self.state.model(model), self.work[model]
        keep = {k.path for k in (ms.live, ms.previous) if k is not None}
        if work.record is not None:
            keep.add(str(self.store.version_dir(model, work.record)))
        self.store.prune(model, keep)

    # -- what the device says ---------------------------------------------------------------

    def _verdict(self, record: ReleaseRecord, phase: Phase, note: str) -> dict[str, Any]:
        report = self.work[record.model].last_report or {}
        verdict = phase if phase in ("promoted", "rolled_back", "inconclusive") else "refused"
        return {
            "device": self.device,
            "release": record.release,
            "version": record.version,
            "verdict": verdict,
            "canary": self.work[record.model].canary,
            "rows": report.get("rows") or 0,
            "agreement": report.get("agreement"),
            "latency_ratio": report.get("latency_ratio"),
            "reason": note[:2000],
            "ts": round(time.time(), 3),
        }

    def _publish_verdict(self, model: str, verdict: dict[str, Any]) -> None:
        topic = verdict_topic(self.config.group, model, str(verdict["release"]), self.device)
        if self.transport.publish(topic, orjson.dumps(verdict), retain=True):
            pending = self.state.model(model).pending_verdicts
            if verdict in pending:
                pending.remove(verdict)
                self.store.save_state(self.state)

    def _refused(self, model: str, release: str | None, why: str, *, verdict: ReleaseRecord | None = None) -> None:
        """A record or chunk not taken: said in the log, the state and on the alerts topic (each rate-limited).
        A release this device cannot take (``verdict``) gets a ``refused`` verdict."""
        self._count("refused")
        self._ratelog.log(f"refused:{model}", "fleet: model %s: %s", model, why)
        ms = self.state.model(model)
        ms.note = why[:500]
        self._state_dirty = True
        now = time.monotonic()
        if now >= self._alert_due.get(model, 0.0):  # strangers can publish records as fast as the broker takes them
            self._alert_due[model] = now + _ALERT_EVERY_S
            event = {"kind": "release_refused", "model": model, "release": release, "reason": why[:1000]}
            self.transport.publish(f"edge-runtime/{self.device}/alerts", orjson.dumps(event))
        if verdict is not None:
            ms.last_issued = max(ms.last_issued, verdict.issued)
            self.state.remember_failed(model, verdict.release)
            pending = self._verdict(verdict, "refused", why)
            ms.pending_verdicts.append(pending)
            self._set_phase(model, ms.phase if self.work[model].record is not None else "refused", why)
            self._publish_verdict(model, pending)

    def _set_phase(self, model: str, phase: Phase, note: str) -> None:
        ms = self.state.model(model)
        ms.phase, ms.note = phase, note[:500]
        self.store.save_state(self.state)
        self._state_dirty = True
        self._state_due = 0.0

    def state_message(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, work in self.work.items():
            ms: ModelState = self.state.model(name)
            record = work.record
            entry: dict[str, Any] = {
                "actual": self.host.live_version(name),
                "release": ms.live.release if ms.live else None,
                "previous": ms.previous.version if ms.previous else None,
                "desired": ms.desired,
                "desired_release": record.release if record else None,
                "phase": ms.phase,
                "canary": ms.canary,
                "note": ms.note,
            }
            if record is not None and ms.phase == "downloading":
                entry["progress"] = {
                    "chunks": len(work.have),
                    "of": len(record.chunks),
                    "resumed_from": work.resumed_from,
                    "fetched": work.fetched,
                }
            if record is not None and work.last_report is not None:
                entry["shadow"] = work.last_report
            models[name] = entry
        counters = {**self.counters, **self.transport.counters}
        return {"ts": round(time.time(), 3), "fleet": self.config.group, "models": models, "counters": counters}

    def _publish_state(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and (not self._state_dirty or now < self._state_due):
            return
        if self.transport.publish(models_topic(self.device), orjson.dumps(self.state_message()), retain=True):
            self._state_dirty = False
            self._state_due = now + _STATE_EVERY_S

    def _tick(self) -> None:
        now = time.monotonic()
        for name, work in self.work.items():
            if work.record is None:
                continue
            phase = self.state.model(name).phase
            if phase == "downloading":
                self._ask_for_chunks(name, now)
            elif phase == "shadowing":
                self._judge(name, now)
        self._publish_state()
