"""The broker options every subcommand that talks to a broker takes, and the BrokerConfig they make.

The same settings as the config file's ``[broker]`` table (TLS, client certificate, user name, password from
the environment), checked at once: a bad URL or a missing or broken certificate file is one line naming
the option, before anything connects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import BrokerConfig
from ..errors import ConfigError

__all__ = ["add_broker_options", "broker_from_args"]

_OPTIONS = {
    "broker": "--cert-file/--key-file",
    "broker.url": "--broker",
    "broker.ca_file": "--ca-file",
    "broker.cert_file": "--cert-file",
    "broker.key_file": "--key-file",
    "broker.username": "--username",
    "broker.password_env": "--password-env",
}


def add_broker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port, or mqtts://host:port for TLS"
    )
    group.add_argument("--ca-file", type=Path, help="CA certificate (PEM) for mqtts://; default: the system's CAs")
    group.add_argument("--cert-file", type=Path, help="client certificate (PEM) for mutual TLS")
    group.add_argument("--key-file", type=Path, help="client private key (PEM) for mutual TLS")
    group.add_argument("--username", help="user name, if the broker asks for one")
    group.add_argument(
        "--password-env",
        metavar="VAR",
        help="environment variable holding the password (never the password itself, which `ps` would show)",
    )


def broker_from_args(args: argparse.Namespace) -> BrokerConfig:
    """The BrokerConfig the options describe, with its TLS files and password checked; ConfigError naming the
    option otherwise."""
    from ..mqtt.client import broker_config

    fields = {
        "ca_file": args.ca_file,
        "cert_file": args.cert_file,
        "key_file": args.key_file,
        "username": args.username,
        "password_env": args.password_env,
    }
    try:
        config = broker_config(args.broker, **{k: v for k, v in fields.items() if v is not None})
        config.tls_context()
        config.password()
    except ConfigError as err:
        raise ConfigError(err.message, key=_OPTIONS.get(err.key or "", err.key)) from None
    return config
