"""``edge-runtime keys new|id`` and ``edge-runtime publish``: signing keys and fleet releases, on a workstation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.cli.broker_options import add_broker_options, broker_from_args

from .release import add_plan_options


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="Ed25519 signing keys: devices trust the public half only")
    keysub = keys.add_subparsers(dest="what", required=True, metavar="ACTION")
    new = keysub.add_parser("new", help="write NAME.key (private, mode 600) and NAME.pub (for the devices)")
    new.add_argument("name", type=Path, help="path without extension, e.g. keys/release")
    new.set_defaults(handler=_keys_new)
    show = keysub.add_parser("id", help="the id of a key file (what signatures and errors name)")
    show.add_argument("file", type=Path)
    show.set_defaults(handler=_keys_id)

    pub = sub.add_parser("publish", help="publish a signed bundle to a fleet over MQTT (chunks + signed record)")
    pub.add_argument(
        "bundle", type=Path, help="bundle directory, signed with --key (`edge-runtime sign DIR --key FILE`)"
    )
    pub.add_argument("--fleet", required=True, metavar="GROUP", help="the devices' [fleet] group")
    pub.add_argument(
        "--key", type=Path, required=True, metavar="FILE", help="Ed25519 private key that signs the record"
    )
    pub.add_argument("--model", help="the [[models]] name it replaces on the devices (default: the bundle's name)")
    add_plan_options(pub)
    pub.add_argument("--chunk-kb", type=int, default=256, help="chunk size in KB (default %(default)s)")
    pub.add_argument(
        "--downgrade", action="store_true", help="allow an older version than the fleet's current one (a rollback)"
    )
    add_broker_options(pub)
    pub.set_defaults(handler=_publish)


def _keys_new(args: argparse.Namespace) -> int:
    from edge_runtime.bundle.signing import new_key_pair

    stem = args.name.with_suffix("") if args.name.suffix in (".key", ".pub") else args.name
    private, public = stem.with_name(stem.name + ".key"), stem.with_name(stem.name + ".pub")
    if not stem.parent.is_dir():
        from edge_runtime.errors import EdgeRuntimeError

        raise EdgeRuntimeError(f"{stem.parent} is not a directory; create it first")
    key = new_key_pair(private, public)
    print(f"wrote {private} (private, mode 600: keep it here, never on a device)")
    print(f'wrote {public} (key id {key.key_id}): devices trust it with [trust] public_keys = ["{public.name}"]')
    return 0


def _keys_id(args: argparse.Namespace) -> int:
    from edge_runtime.bundle.signing import key_id, read_public_key, read_signing_key

    text = args.file.read_bytes()[:4096] if args.file.is_file() else b""
    if b"PRIVATE KEY" in text:
        print(read_signing_key(args.file).key_id)
    else:
        print(key_id(read_public_key(args.file)))
    return 0


def _publish(args: argparse.Namespace) -> int:
    from edge_runtime.errors import EdgeRuntimeError

    from ._cli import _private_key
    from .release import plan_from_args, publish_release

    plan = plan_from_args(args)
    if not 1 <= args.chunk_kb <= 256 * 1024:
        raise EdgeRuntimeError(f"--chunk-kb: 1 to 262144, not {args.chunk_kb}")
    if args.chunk_kb < 16:
        raise EdgeRuntimeError("--chunk-kb: at least 16 (each chunk is one MQTT message and one file on the device)")
    key = _private_key(args.key, "--key")
    done = publish_release(
        args.bundle,
        broker=broker_from_args(args),
        group=args.fleet,
        key=key,
        model=args.model,
        plan=plan,
        chunk_kb=args.chunk_kb,
        downgrade=args.downgrade,
    )
    r = done.record
    was = f", superseding {done.superseded.version} ({done.superseded.release})" if done.superseded else ""
    print(
        f"published {r.model} {r.version} to fleet {r.fleet}: release {r.release}, {len(r.chunks)} chunks of "
        f"{r.chunk_size // 1024} KB ({r.size / 1e6:.2f} MB), canary {r.plan.canary:g}, signed by {key.key_id}{was} "
        f"in {done.seconds:.1f} s",
        file=sys.stderr,
    )
    print("follow it with `edge-runtime status --broker ...` (the MODELS table)", file=sys.stderr)
    return 0
