"""TLS and passwords against a real Mosquitto: certificates and the password file are made here."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess

import pytest
from helpers import Collector, payload, route_config

from edge_runtime.config import parse_config
from edge_runtime.devtools.broker import find_mosquitto, free_port, start_broker
from edge_runtime.errors import BrokerError, ConfigError
from edge_runtime.serving.runtime import Runtime

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto: apt-get install mosquitto"),
]


def _key_and_cert(subject: str, *, issuer=None, ca: bool = False):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_key, issuer_name = issuer if issuer else (key, name)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return key, builder.sign(issuer_key, hashes.SHA256()), name


def _write(path, key, cert):
    from cryptography.hazmat.primitives import serialization

    path.with_suffix(".key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def secured_broker(tmp_path_factory):
    """A plain listener for the test's own clients, a TLS listener that wants client certificates, and a
    password-only listener with anonymous access off."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert, ca_name = _key_and_cert("edge test CA", ca=True)
    _write(d / "ca", ca_key, ca_cert)
    for who in ("server", "client"):
        key, cert, _ = _key_and_cert(who, issuer=(ca_key, ca_name))
        _write(d / who, key, cert)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "device", "s3cret"], check=True)
    (d / "passwd").chmod(0o600)
    tls_port, pw_port = free_port(), free_port()
    extra = (
        f"listener {tls_port} 127.0.0.1\nallow_anonymous true\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n"
        f"keyfile {d}/server.key\nrequire_certificate true\n"
        f"listener {pw_port} 127.0.0.1\nallow_anonymous false\npassword_file {d}/passwd\n"
    )
    with start_broker(kind="mosquitto", workdir=d / "broker", extra_config=extra) as b:
        yield b, d, tls_port, pw_port


def _serve_one(broker, config_text: str, client_id: str, vibration_data):
    _, _, Xt, _ = vibration_data
    results = Collector(broker.url, "results/+/vibration")
    sender = Collector(broker.url)
    runtime = Runtime(parse_config(config_text))
    try:
        runtime.start()
        sender.client.publish("sensors/a/vibration", payload(Xt[0], id=client_id), qos=1).wait_for_publish(5)
        deadline = 200
        while results.messages.empty() and deadline:
            runtime.link.poll(0.05)
            runtime._serve_round()
            deadline -= 1
        return results.json(1, timeout=1)[0][1]
    finally:
        runtime.shutdown()
        results.close()
        sender.close()


def _config(url: str, bundle, client_id: str, broker_lines: str) -> str:
    return route_config(url, bundle, client_id=client_id, qos=1).replace(
        f'client_id = "{client_id}"\n', f'client_id = "{client_id}"\n{broker_lines}'
    )


def test_mutual_tls(secured_broker, vibration_bundle, vibration_data):
    broker, d, tls_port, _ = secured_broker
    url = f"mqtts://127.0.0.1:{tls_port}"
    lines = f'ca_file = "{d}/ca.crt"\ncert_file = "{d}/client.crt"\nkey_file = "{d}/client.key"\n'
    assert _serve_one(broker, _config(url, vibration_bundle, "tls-1", lines), "tls-1", vibration_data)["id"] == "tls-1"

    for missing, _name in ((f'ca_file = "{d}/ca.crt"\n', "no client certificate"), ("", "unknown CA")):
        runtime = Runtime(parse_config(_config(url, vibration_bundle, "tls-2", missing)))
        with pytest.raises(BrokerError):
            runtime.link.connect(timeout=3)
        runtime.link.close()


def test_password_from_the_environment(secured_broker, vibration_bundle, vibration_data, monkeypatch):
    broker, _, _, pw_port = secured_broker
    url = f"mqtt://127.0.0.1:{pw_port}"
    lines = 'username = "device"\npassword_env = "EDGE_TEST_PASSWORD"\n'
    monkeypatch.setenv("EDGE_TEST_PASSWORD", "s3cret")
    assert _serve_one(broker, _config(url, vibration_bundle, "pw-1", lines), "pw-1", vibration_data)["id"] == "pw-1"

    monkeypatch.setenv("EDGE_TEST_PASSWORD", "wrong")
    runtime = Runtime(parse_config(_config(url, vibration_bundle, "pw-2", lines)))
    with pytest.raises(BrokerError, match="refused"):
        runtime.link.connect(timeout=3)
    runtime.link.close()

    monkeypatch.delenv("EDGE_TEST_PASSWORD")
    with pytest.raises(ConfigError, match="EDGE_TEST_PASSWORD"):
        Runtime(parse_config(_config(url, vibration_bundle, "pw-3", lines)))

    anonymous = Runtime(parse_config(_config(url, vibration_bundle, "pw-4", "")))
    with pytest.raises(BrokerError, match="refused"):
        anonymous.link.connect(timeout=3)
    anonymous.link.close()


def test_password_in_clear_is_not_a_config_key():
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(
            '[broker]\npassword = "x"\n[[models]]\nname="m"\nbundle="b"\n'
            '[[routes]]\nsubscribe="a"\nmodel="m"\npublish="b"\n'
        )
