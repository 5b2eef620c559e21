"""The fixed sets of values the project names in more than one place, each defined once.

They are ``Literal`` aliases rather than enums so that config files, manifests, metrics and error
messages carry plain strings, while mypy checks every place that spells one. Each has a tuple of its
values for checks at run time and for help texts.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "Overflow",
    "OVERFLOW_POLICIES",
    "DropReason",
    "DROP_REASONS",
    "ErrorCode",
    "ERROR_CODES",
    "QuantizationMode",
    "QUANTIZATION_MODES",
]

# What a full route queue gives up (see serving/batcher.py).
Overflow = Literal["drop_oldest", "reject", "latest_only"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = get_args(Overflow)

# Why an input was given up; counted per route under this name. A QoS 1 input given up under overload is still
# answered, with an error saying why (serving/responder.py). ``bad_topic``: neither its result nor its error
# topic can be published on (too long, say); ``unanswerable``: the broker refused both its answer and the error
# that replaced it; ``shutdown``: it arrived or waited while stopping (never acknowledged, so the broker
# redelivers a QoS 1 input).
DropReason = Literal[
    "queue_full", "rejected", "superseded", "expired", "shutdown", "bad_topic", "outgoing_full", "unanswerable"
]
DROP_REASONS: tuple[DropReason, ...] = get_args(DropReason)

# The ``error`` field of a message on a route's error topic: short, stable, for machines.
ErrorCode = Literal[
    "too_large",
    "empty",
    "bad_json",
    "no_values",
    "bad_id",
    "bad_values",
    "bad_npy",
    "bad_dtype",
    "bad_shape",
    "not_finite",
    "bad_image",
    "not_image",
    "overloaded",  # the route's queue was full (reject, or a dropped QoS 1 input)
    "superseded",  # latest_only: a newer input on the same topic replaced this QoS 1 input
    "expired",  # a QoS 1 input waited longer than deadline_ms
    "answer_too_large",  # the result is larger than the broker's Maximum Packet Size
    "answer_refused",  # the broker refused to take the result (not authorised, quota...)
    "bad_topic",  # the result's topic is not one MQTT allows (rendered from a 65,535-byte input topic, say)
    "inference_failed",
    "internal",  # the runtime could not handle this input (a bug: logged with its traceback)
]
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)

# How a bundle's model was (or is to be) quantized.
QuantizationMode = Literal["none", "fp16", "dynamic", "static"]
QUANTIZATION_MODES: tuple[QuantizationMode, ...] = get_args(QuantizationMode)
