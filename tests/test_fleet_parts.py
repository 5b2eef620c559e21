"""The fleet's parts without a broker: signed records and chunks, the archive, the on-disk store, the judge."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile

import orjson
import pytest

from edge_runtime.bundle import TrustedKeys, load_bundle, sign_bundle
from edge_runtime.bundle.signing import new_key_pair
from edge_runtime.errors import ReleaseError
from edge_runtime.fleet.archive import pack_bundle, unpack_archive
from edge_runtime.fleet.judge import Observation, canary_position, fleet_decision, is_canary, judge
from edge_runtime.fleet.record import (
    Plan,
    ReleaseRecord,
    Verdict,
    chunk_message,
    read_chunk,
    read_record,
    sign_record,
    version_key,
)
from edge_runtime.fleet.store import DeviceState, FleetStore


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    return new_key_pair(folder / "a.key", folder / "a.pub"), new_key_pair(folder / "b.key", folder / "b.pub")


@pytest.fixture(scope="module")
def signed_bundle(vibration_bundle, keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("signed") / "vibration"
    shutil.copytree(vibration_bundle, out)
    sign_bundle(out, private_key=keys[0])
    return out


def _record(archive: bytes, chunk_size: int = 4096, **fields) -> tuple[ReleaseRecord, list[bytes]]:
    chunks = [archive[i : i + chunk_size] for i in range(0, len(archive), chunk_size)]
    sha = hashlib.sha256(archive).hexdigest()
    body = {
        "fleet": "lab",
        "model": "m",
        "version": "4",
        "release": sha[:16],
        "sha256": sha,
        "manifest_sha256": "0" * 64,
        "size": len(archive),
        "unpacked": len(archive),
        "chunk_size": chunk_size,
        "chunks": [hashlib.sha256(c).hexdigest() for c in chunks],
        "issued": 1000,
        **fields,
    }
    return ReleaseRecord(**body), chunks


def test_a_signed_record_is_read_back_and_a_changed_one_is_not(keys):
    a, b = keys
    record, _ = _record(b"x" * 10_000)
    message = sign_record(record, a)
    assert read_record(message, TrustedKeys([a.public_raw])) == record
    with pytest.raises(ReleaseError, match=f"unknown key {a.key_id}"):
        read_record(message, TrustedKeys([b.public_raw]))
    body = orjson.loads(message)
    body["record"]["version"] = "5"  # the version a replayed record would like to claim
    with pytest.raises(ReleaseError, match="does not match"):
        read_record(orjson.dumps(body), TrustedKeys([a.public_raw]))
    for junk in (b"", b"[]", b'{"record": 1}', b"\xff" * 10):
        with pytest.raises(ReleaseError):
            read_record(junk, TrustedKeys([a.public_raw]))


def test_a_record_must_be_consistent(keys):
    record, _ = _record(b"x" * 10_000)
    with pytest.raises(ValueError, match="chunks"):
        ReleaseRecord(**{**record.model_dump(), "chunks": record.chunks[:-1]})
    with pytest.raises(ValueError, match="release must be"):
        ReleaseRecord(**{**record.model_dump(), "release": "0" * 16})
    with pytest.raises(ValueError, match="min_rows"):
        Plan(window_rows=10, min_rows=20)


def test_a_chunk_is_checked_against_the_record():
    record, chunks = _record(bytes(range(256)) * 40)
    assert read_chunk(chunk_message(1, chunks[1]), record, 1) == chunks[1]
    with pytest.raises(ReleaseError, match="says it is chunk 1"):
        read_chunk(chunk_message(1, chunks[1]), record, 2)
    tampered = bytearray(chunks[1])
    tampered[7] ^= 1
    with pytest.raises(ReleaseError, match="does not match the signed record"):  # consistent in itself
        read_chunk(chunk_message(1, bytes(tampered)), record, 1)
    damaged = bytearray(chunk_message(1, chunks[1]))
    damaged[-1] ^= 1
    with pytest.raises(ReleaseError, match="damaged"):
        read_chunk(bytes(damaged), record, 1)


def test_versions_are_ordered_number_by_number():
    ordered = ["1", "2", "2.rc1", "2.0", "2.1", "2.10", "10"]
    assert sorted(ordered, key=version_key) == ordered


def test_the_archive_is_the_same_bytes_every_time_and_unpacks_to_a_verified_bundle(signed_bundle, keys, tmp_path):
    trusted = TrustedKeys([keys[0].public_raw])
    one, two = pack_bundle(signed_bundle, trusted_keys=trusted), pack_bundle(signed_bundle)
    assert one.archive == two.archive and one.unpacked > 0
    (tmp_path / "a.tar").write_bytes(one.archive)
    unpack_archive(tmp_path / "a.tar", tmp_path / "out", max_bytes=one.unpacked)
    assert load_bundle(tmp_path / "out", trusted_keys=trusted).manifest.version == one.manifest.version
    with pytest.raises(ReleaseError, match="more than"):
        unpack_archive(tmp_path / "a.tar", tmp_path / "small", max_bytes=100)
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob(".small*"))


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink"])
def test_unpacking_refuses_anything_but_plain_files_inside(kind, tmp_path):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo({"parent": "../evil", "absolute": "/tmp/evil", "symlink": "link"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        else:
            info.size = 4
        tar.addfile(info, io.BytesIO(b"evil") if kind != "symlink" else None)
    (tmp_path / "a.tar").write_bytes(out.getvalue())
    with pytest.raises(ReleaseError, match="not a plain file name"):
        unpack_archive(tmp_path / "a.tar", tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "evil").exists()


def test_the_store_resumes_from_good_chunks_and_bounds_the_disk(tmp_path):
    record, chunks = _record(bytes(range(256)) * 100, chunk_size=4096)
    store = FleetStore(tmp_path / "fleet", max_bytes=10 << 20)
    for i in (0, 2, 3):
        store.write_chunk(record, i, chunks[i])
    (store.downloads / record.release / "3.chunk").write_bytes(b"torn")  # a bad file is not counted
    again = FleetStore(tmp_path / "fleet", max_bytes=10 << 20)  # as after a restart
    assert again.chunks_present(record) == {0, 2}
    for i in range(len(chunks)):
        again.write_chunk(record, i, chunks[i])
    assert again.assemble(record).read_bytes() == b"".join(chunks)
    assert again.room_for(record, reclaimable=set()) is None
    tight = FleetStore(tmp_path / "fleet", max_bytes=len(b"".join(chunks)))
    assert "fleet.max_disk_mb" in tight.room_for(record, reclaimable=set())


def test_the_state_file_survives_and_junk_starts_afresh(tmp_path):
    store = FleetStore(tmp_path, max_bytes=1 << 20)
    state = DeviceState()
    state.model("m").last_issued = 42
    state.remember_failed("m", "a" * 16)
    store.save_state(state)
    assert store.load_state().model("m").last_issued == 42
    (tmp_path / "state.json").write_text("{not json")
    assert store.load_state().models == {}
    assert (tmp_path / "state.unreadable").exists()


PLAN = Plan(window_rows=100, min_rows=20, min_agreement=0.9, max_latency_ratio=2.0, window_s=60)


def _obs(rows, agreed, *, errors=0, live=1.0, shadow=1.0, drift=0, elapsed=1.0, timed=100):
    return Observation(rows, agreed, errors, live, shadow, drift, elapsed, latency_samples=timed)


def test_the_judge_promotes_a_candidate_that_agrees_and_keeps_up():
    assert judge(PLAN, _obs(50, 50)).action == "wait"
    assert judge(PLAN, _obs(100, 95, shadow=1.5)).action == "promote"


def test_the_judge_rolls_back_as_soon_as_agreement_cannot_be_reached():
    # 10 disagreements are the most 100 rows at 0.9 can take: the 11th decides, long before the window ends
    assert judge(PLAN, _obs(20, 10)).action == "wait"
    decision = judge(PLAN, _obs(20, 9))
    assert decision.action == "rollback" and "11 of 20" in decision.reason
    assert judge(PLAN, _obs(15, 10, errors=6)).action == "rollback"  # failures count against it


def test_the_judge_rolls_back_slow_or_drifting_candidates_and_calls_thin_traffic_inconclusive():
    assert "latency" in judge(PLAN, _obs(100, 100, shadow=2.5)).reason
    # a p95 of a few batches is their slowest one: one pause of the shadow's thread is not a slow model
    decision = judge(PLAN, _obs(100, 100, shadow=2.5, timed=11))
    assert decision.action == "promote" and "not judged (11 batches timed, 20 needed)" in decision.reason
    assert judge(PLAN, _obs(40, 40, drift=1)).action == "rollback"
    assert judge(PLAN, _obs(10, 10, elapsed=61)).action == "inconclusive"
    assert judge(PLAN, _obs(30, 30, elapsed=61)).action == "promote"


def test_canaries_are_a_stable_share_of_the_fleet():
    devices = [f"device-{i}" for i in range(2000)]
    share = sum(is_canary(d, 0.25) for d in devices) / len(devices)
    assert 0.2 < share < 0.3
    assert [canary_position(d) for d in devices[:5]] == [canary_position(d) for d in devices[:5]]
    assert not any(is_canary(d, 0.0) for d in devices) and all(is_canary(d, 1.0) for d in devices)


def _verdict(device, verdict, canary=True):
    return Verdict(device=device, release="0" * 16, version="4", verdict=verdict, canary=canary)


def test_the_rest_follow_the_canaries_and_never_a_rolled_back_release():
    plan = Plan(canaries_needed=2)
    assert fleet_decision(plan, [_verdict("a", "promoted")]).action == "wait"
    assert fleet_decision(plan, [_verdict("a", "promoted"), _verdict("b", "promoted", canary=False)]).action == "wait"
    assert fleet_decision(plan, [_verdict("a", "promoted"), _verdict("b", "promoted")]).action == "promote"
    three = [_verdict("a", "promoted"), _verdict("b", "promoted"), _verdict("c", "rolled_back")]
    assert fleet_decision(plan, three).action == "rollback"
    assert fleet_decision(Plan(canary=0), []).action == "promote"


def test_a_verdict_from_a_stranger_is_bounded():
    with pytest.raises(ValueError):
        Verdict.model_validate({"device": "x", "release": "nothex", "version": "1", "verdict": "promoted"})


def test_the_status_board_shows_fleet_devices_and_skips_junk():
    from edge_runtime.observability.status import StatusBoard

    board = StatusBoard()
    state = {
        "fleet": "lab",
        "models": {
            "m": {
                "actual": "3",
                "desired": "4",
                "phase": "downloading",
                "canary": True,
                "progress": {"chunks": 3, "of": 9},
            }
        },
    }
    board.update("edge-runtime/dev-1/models", orjson.dumps(state))
    shadowing = {"actual": "3", "desired": "4", "phase": "shadowing", "shadow": {"rows": 40, "agreement": 0.975}}
    board.update("edge-runtime/dev-2/models", orjson.dumps({"fleet": "lab", "models": {"m": shadowing}}))
    for junk in (b"", b"[]", b'{"models": {"m": {"phase": 3}}}', b'{"models": {"m": {"progress": {"chunks": -1}}}}'):
        board.update("edge-runtime/dev-3/models", junk)
    text = board.render()
    assert "DEVICE" in text and "3/9 chunks" in text and "agreement 0.975 over 40 rows" in text
    assert "dev-3" not in text and board.skipped == 4


def test_a_fleet_config_needs_trusted_keys_its_models_and_one_process(tmp_path, vibration_bundle, keys):
    from edge_runtime.config import parse_config
    from edge_runtime.errors import ConfigError
    from edge_runtime.serving.workers import check_workers

    (tmp_path / "a.pub").write_bytes(keys[0].public_pem())
    base = (
        f'[[models]]\nname = "m"\nbundle = "{vibration_bundle}"\n'
        '[[routes]]\nmodel = "m"\nsubscribe = "s/#"\npublish = "r"\n'
    )
    with pytest.raises(ConfigError, match=r"fleet\.group: a fleet needs \[trust\] public_keys"):
        parse_config('[fleet]\ngroup = "lab"\n' + base, base_dir=tmp_path)
    trusted = '[trust]\npublic_keys = ["a.pub"]\n'
    with pytest.raises(ConfigError, match=r"fleet\.models: no model named 'x'"):
        parse_config(trusted + '[fleet]\ngroup = "lab"\nmodels = ["x"]\n' + base, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"fleet\.group"):
        parse_config(trusted + '[fleet]\ngroup = "a/b"\n' + base, base_dir=tmp_path)
    config = parse_config(trusted + '[fleet]\ngroup = "lab"\ndir = "f"\n' + base, base_dir=tmp_path)
    assert config.fleet.dir == tmp_path / "f"
    with pytest.raises(ConfigError, match="one process"):
        check_workers(config, 2)
