"""Ed25519 bundle signatures: keys made by the CLI, bundles signed by convert and sign, checked by public keys only."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from edge_runtime.bundle import TrustedKeys, load_bundle, sign_bundle
from edge_runtime.bundle.signing import key_id, new_key_pair, read_public_key, read_signing_key
from edge_runtime.config import parse_config
from edge_runtime.errors import BundleError, ConfigError


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    a = new_key_pair(folder / "a.key", folder / "a.pub")
    b = new_key_pair(folder / "b.key", folder / "b.pub")
    return folder, a, b


@pytest.fixture
def bundle_copy(vibration_bundle, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(vibration_bundle, out)
    return out


def test_keys_new_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    done = cli("keys", "new", str(tmp_path / "release"))
    assert done.returncode == 0, done.stderr
    private, public = tmp_path / "release.key", tmp_path / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert b"PRIVATE" not in public.read_bytes()
    ident = key_id(read_public_key(public))
    assert ident in done.stdout and len(ident) == 16
    assert cli("keys", "id", str(private)).stdout.strip() == ident == cli("keys", "id", str(public)).stdout.strip()
    again = cli("keys", "new", str(tmp_path / "release"))
    assert again.returncode == 2 and "never overwritten" in again.stderr and "Traceback" not in again.stderr


def test_a_bundle_signed_with_a_key_loads_only_where_that_key_is_trusted(keys, bundle_copy):
    _, a, b = keys
    with pytest.raises(BundleError, match="not signed with a key"):
        load_bundle(bundle_copy, trusted_keys=TrustedKeys([a.public_raw]))
    sign_bundle(bundle_copy, private_key=a)
    assert load_bundle(bundle_copy, trusted_keys=TrustedKeys([a.public_raw])).manifest.key_signature.key_id == a.key_id
    with pytest.raises(BundleError, match=f"unknown key {a.key_id}"):  # the message names the key's id
        load_bundle(bundle_copy, trusted_keys=TrustedKeys([b.public_raw]))
    load_bundle(bundle_copy)  # no trust configured: the signature is not asked for


def test_a_manifest_changed_after_signing_is_refused(keys, bundle_copy):
    _, a, _ = keys
    sign_bundle(bundle_copy, private_key=a)
    path = bundle_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["labels"] = list(reversed(manifest["labels"]))
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="does not match"):
        load_bundle(bundle_copy, trusted_keys=TrustedKeys([a.public_raw]))


def test_hmac_and_key_signatures_live_side_by_side(keys, bundle_copy):
    _, a, _ = keys
    sign_bundle(bundle_copy, b"s3cret")
    sign_bundle(bundle_copy, private_key=a)  # keeps the HMAC signature, adds the key's
    loaded = load_bundle(bundle_copy, signing_key=b"s3cret", trusted_keys=TrustedKeys([a.public_raw]))
    assert loaded.manifest.signature and loaded.manifest.key_signature


def test_sign_and_convert_take_a_key_file(keys, bundle_copy, vibration_model, tmp_path):
    import joblib

    folder, a, _ = keys
    done = cli("sign", str(bundle_copy), "--key", str(folder / "a.key"))
    assert done.returncode == 0, done.stderr
    assert a.key_id in done.stderr
    load_bundle(bundle_copy, trusted_keys=TrustedKeys([a.public_raw]))
    source = tmp_path / "model.joblib"
    joblib.dump(vibration_model, source)
    converted = cli("convert", str(source), "-o", str(tmp_path / "signed"), "--sign-key", str(folder / "a.key"))
    assert converted.returncode == 0, converted.stderr
    load_bundle(tmp_path / "signed", trusted_keys=TrustedKeys([a.public_raw]))
    nothing = cli("sign", str(bundle_copy))
    assert nothing.returncode == 2 and "--key FILE" in nothing.stderr
    public = cli("sign", str(bundle_copy), "--key", str(folder / "a.pub"))
    assert public.returncode == 2 and "--key:" in public.stderr and "Traceback" not in public.stderr


def test_trust_in_the_config_reads_key_files_and_inline_keys(keys, vibration_bundle, tmp_path):
    import base64

    folder, a, b = keys
    inline = "ed25519:" + base64.b64encode(b.public_raw).decode()
    shutil.copy(folder / "a.pub", tmp_path / "a.pub")
    text = (
        f'[trust]\npublic_keys = ["a.pub", "{inline}"]\n'
        f'[[models]]\nname = "m"\nbundle = "{vibration_bundle}"\n'
        '[[routes]]\nmodel = "m"\nsubscribe = "s/#"\npublish = "r"\n'
    )
    config = parse_config(text, base_dir=tmp_path)
    assert config.trust.trusted().ids == sorted([a.key_id, b.key_id])
    with pytest.raises(ConfigError, match=r"trust\.public_keys: .*private key"):
        parse_config(text.replace("a.pub", str(folder / "a.key")), base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"trust\.public_keys: cannot read key file"):
        parse_config(text.replace("a.pub", "missing.pub"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="not ed25519:<base64 of 32 bytes>"):
        parse_config(text.replace(inline, "ed25519:AAAA"), base_dir=tmp_path)


def test_a_device_config_with_trust_refuses_an_unsigned_bundle_at_start(keys, vibration_bundle, tmp_path):
    folder, _, _ = keys
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[trust]\npublic_keys = ["{folder / "a.pub"}"]\n'
        f'[[models]]\nname = "m"\nbundle = "{vibration_bundle}"\n'
        '[[routes]]\nmodel = "m"\nsubscribe = "s/#"\npublish = "r"\n'
    )
    done = cli("run", str(config), "--validate-config")
    assert done.returncode == 2 and "not signed with a key" in done.stderr and "Traceback" not in done.stderr


def test_a_private_key_file_is_read_back(keys):
    folder, a, _ = keys
    assert read_signing_key(folder / "a.key").key_id == a.key_id
    (folder / "junk.key").write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        read_signing_key(folder / "junk.key")
    os.unlink(folder / "junk.key")


def test_without_the_fleet_extra_keys_are_one_line_saying_what_to_install(keys, vibration_bundle, tmp_path):
    folder, _, _ = keys
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[trust]\npublic_keys = ["{folder / "a.pub"}"]\n'
        f'[[models]]\nname = "m"\nbundle = "{vibration_bundle}"\n'
        '[[routes]]\nmodel = "m"\nsubscribe = "s/#"\npublish = "r"\n'
    )
    no_crypto = (  # a device installed without the [fleet] extra
        "import sys; sys.modules['cryptography'] = None; "
        "from edge_runtime.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    for args in (["run", str(config), "--validate-config"], ["keys", "new", str(tmp_path / "k")]):
        done = subprocess.run([sys.executable, "-c", no_crypto, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "pip install 'edge-runtime[fleet]'" in done.stderr and done.stderr.count("\n") == 1
