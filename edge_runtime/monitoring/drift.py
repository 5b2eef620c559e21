"""Drift on the device: the last ``window`` rows of a route against its bundle's reference statistics.

Per batch, ``observe`` bins every channel of every row (input features, and the outputs: class, confidence
or value) with the reference's edges, writes the bin indices into a ring buffer of ``window`` rows, and
moves the counts: the new rows' bins are added and those of the rows they push out of the window are
subtracted. The memory is fixed at start (the ring, and one count per bin); a batch costs a handful of
numpy calls whatever its size, and nothing is allocated per message.

Scores (``psi`` in ``reference.py``: sum of (p_live - p_ref) * ln(p_live / p_ref), shares floored at
``epsilon`` = 1e-4 so an empty bin costs a bounded amount):
- per input feature, the PSI of its bins;
- ``outputs``: the largest PSI among the output channels (class mix, confidence, values; None when the
  reference has no outputs);
- ``score``: the largest of all of them. A mean would dilute the case that matters most (one
  recalibrated sensor among sixteen) by the number of features. The price is sampling noise: with
  ``window`` rows and B bins a stable channel's PSI is about (B - 1) / window on average (0.009 for 10
  bins and 1000 rows), so the largest of even a few hundred stable features stays far under 0.2; windows
  under a few hundred rows make noisy scores.

Alerts (hysteresis, at most one event per change of state):
- the score is evaluated once the window is full, at the first batch that ends ``evaluate_every`` rows
  (default: a tenth of the window) or more after the last evaluation; nothing is evaluated before the
  window is full (``snapshot`` still shows the partial score);
- ``drift`` starts at the first evaluation at least ``sustain`` rows (default: one window) after the
  first evaluation above ``threshold``, every evaluation in between above it too: the score held above
  the threshold for a whole window, so a short burst does not alert;
- ``drift_cleared`` likewise when the score has then stayed at or below ``clear_threshold`` (default: half
  the threshold) for ``sustain`` rows. Between the two thresholds the state holds: no alert storms.
Events: ``{"kind": "drift" | "drift_cleared", "route", "model", "score", "features"}``; a drift's ``features``
are the input features whose PSI is above the threshold, most drifted first, at most ``top_features``
(empty when only the outputs moved); a drift_cleared's are empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .reference import EPSILON, REFERENCE_FORMAT, OutputSummary, bin_index, edges_matrix, featurize

__all__ = ["DriftMonitor"]


class DriftMonitor:
    """Rolling drift of one route; call ``observe`` from the serving loop with every batch."""

    def __init__(
        self,
        reference: Mapping[str, Any],
        *,
        window: int = 1000,
        threshold: float = 0.2,
        clear_threshold: float | None = None,
        sustain: int | None = None,
        route: str = "",
        model: str = "",
        top_features: int = 5,
        evaluate_every: int | None = None,
        epsilon: float = EPSILON,
    ):
        if not isinstance(reference, Mapping) or reference.get("format") != REFERENCE_FORMAT:
            got = reference.get("format") if isinstance(reference, Mapping) else type(reference).__name__
            raise ValueError(f"reference format {got!r}: this runtime reads format {REFERENCE_FORMAT}")
        if window < 1:
            raise ValueError(f"window must be at least 1 row, not {window}")
        if not threshold > 0:
            raise ValueError(f"threshold must be above 0, not {threshold}")
        clear = threshold / 2 if clear_threshold is None else clear_threshold
        if not 0 < clear <= threshold:
            raise ValueError(f"clear_threshold must be above 0 and at most threshold ({threshold}), not {clear}")
        sustain = window if sustain is None else sustain
        if sustain < 1:
            raise ValueError(f"sustain must be at least 1 row, not {sustain}")
        if top_features < 1 or not 0 < epsilon < 0.01:
            raise ValueError("top_features must be at least 1 and epsilon between 0 and 0.01")
        every = max(1, window // 10) if evaluate_every is None else evaluate_every
        if not 1 <= every <= sustain:
            raise ValueError(f"evaluate_every must be between 1 and sustain ({sustain}) rows, not {every}")
        self.reference = reference  # kept to tell a reload with the same reference (the window is kept then)
        self.window, self.threshold, self.clear_threshold, self.sustain = window, threshold, clear, sustain
        self.evaluate_every = every
        self.route, self.model, self.top_features, self.epsilon = route, model, top_features, epsilon

        self._inputs = reference.get("inputs")
        outputs = reference.get("outputs")
        numeric = list(self._inputs["features"]) if self._inputs else []
        self.feature_names = [str(f["name"]) for f in numeric]
        self._n_features = len(numeric)
        self._summary = OutputSummary(outputs) if outputs else None
        classes = outputs.get("classes") if outputs else None
        numeric += list(outputs.get("values") or ()) if outputs else []
        if not numeric and not classes:
            raise ValueError("the reference describes neither inputs nor outputs: nothing to compare")

        # Every bin of every channel has one slot in ``_counts``: the numeric channels' bins first (``bins``
        # slots each), then the classes. The ring keeps each row's slot per channel, so the rows leaving the
        # window are subtracted with one bincount, and the new ones added with another.
        self._edges = edges_matrix([c["edges"] for c in numeric]) if numeric else None
        bins = max((len(c["shares"]) for c in numeric), default=1)
        ref = np.zeros((len(numeric), bins))
        for j, c in enumerate(numeric):
            ref[j, : len(c["shares"])] = c["shares"]
        self._numeric = len(numeric) * bins
        self._n_values = len(numeric) - self._n_features
        self._has_classes = bool(classes)
        ref = np.concatenate([ref.ravel(), np.asarray(classes["shares"] if classes else [], np.float64)])
        self._ref = np.maximum(ref, epsilon)  # the same flat layout as ``_counts``
        self._log_ref = np.log(self._ref)
        # Where each channel's bins start in the flat layout: one reduceat sums every channel's PSI.
        self._starts = np.r_[np.arange(len(numeric)) * bins, [self._numeric] if classes else []].astype(np.intp)
        size = len(self._ref)
        self._counts = np.zeros(size, dtype=np.int64)
        dtype = np.uint16 if size < 65536 else np.uint32
        self._offsets = (np.arange(len(numeric)) * bins).astype(dtype)[None, :]
        self._ring = np.zeros((window, len(numeric) + self._has_classes), dtype=dtype)
        self._pos = self._filled = self._seen = 0
        self.skipped = 0  # rows whose shape did not match the reference (counted, not binned)
        self.alert = False
        self._since: int | None = None  # rows seen when the score first crossed the level that changes state
        self._next_eval = 0  # rows seen at which the score is next evaluated
        self._score = 0.0

    # -- the hot path ---------------------------------------------------------------------------------

    def observe(
        self,
        batch: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        results: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Take one served batch: the rows given to the model, its outputs and (for detectors) its results.

        Returns the alert events this batch caused (usually none): dicts ready to publish on the alerts topic.
        """
        n = len(batch)
        if n == 0:
            return []
        feats = None
        if self._n_features:
            assert self._inputs is not None  # features are only counted for a reference that has inputs
            feats = featurize(self._inputs, batch)
            if feats is None:
                self.skipped += n
                return []
        cls = vals = None
        if self._summary is not None:
            cls, vals = self._summary(outputs, results, n)
        slots = np.empty((n, self._ring.shape[1]), dtype=self._ring.dtype)
        if self._edges is not None:
            values: np.ndarray | None
            if vals is None or not self._n_values:
                values = feats
            elif feats is None:
                values = vals
            else:
                values = np.concatenate([feats, vals], axis=1)
            assert values is not None  # edges exist only for features or values the summary gives
            np.add(bin_index(values, self._edges), self._offsets, out=slots[:, : self._offsets.shape[1]])
        if self._has_classes:
            assert cls is not None  # a class mix is kept only for tasks whose summary gives classes
            np.add(cls, self._numeric, out=slots[:, -1], casting="unsafe")
        if n > self.window:
            slots = slots[-self.window :]
        k = len(slots)
        first = min(k, self.window - self._pos)  # rows before the ring wraps around
        self._put(slots[:first])
        if first < k:
            self._put(slots[first:])
        self._seen += n
        if self._filled < self.window or self._seen < self._next_eval:
            return []
        self._next_eval = self._seen + self.evaluate_every
        features, outputs_psi = self._psi()
        self._score = score = max(float(features.max(initial=0.0)), outputs_psi or 0.0)
        return self._step(score, features)

    def _put(self, slots: np.ndarray) -> None:
        """Write rows' slots at the ring's position (no wrap inside), moving the counts."""
        lo = self._pos
        hi = lo + len(slots)
        size = self._counts.size
        if self._filled == self.window:  # else the ring fills in order and the places ahead are empty
            self._counts -= np.bincount(self._ring[lo:hi].ravel(), minlength=size)
        self._ring[lo:hi] = slots
        self._counts += np.bincount(slots.ravel(), minlength=size)
        self._pos = hi % self.window
        self._filled = min(self.window, self._filled + len(slots))

    def _step(self, score: float, features: np.ndarray) -> list[dict[str, Any]]:
        crossing = score <= self.clear_threshold if self.alert else score > self.threshold
        if not crossing:
            self._since = None
            return []
        if self._since is None:
            self._since = self._seen
        if self._seen - self._since < self.sustain:
            return []
        self._since = None
        self.alert = not self.alert
        if not self.alert:
            return [self._event("drift_cleared", score, [])]
        order = np.argsort(-features, kind="stable")[: self.top_features]
        return [self._event("drift", score, [self.feature_names[i] for i in order if features[i] > self.threshold])]

    def _event(self, kind: str, score: float, features: list[str]) -> dict[str, Any]:
        return {"kind": kind, "route": self.route, "model": self.model, "score": round(score, 4), "features": features}

    def _psi(self) -> tuple[np.ndarray, float | None]:
        """PSI per input feature, and the outputs' PSI (the largest of the output channels')."""
        live = np.maximum(self._counts / max(self._filled, 1), self.epsilon)
        per_channel = np.add.reduceat((live - self._ref) * (np.log(live) - self._log_ref), self._starts)
        outputs = None
        if self._summary is not None:
            outputs = float(per_channel[self._n_features :].max(initial=0.0))
        return per_channel[: self._n_features], outputs

    # -- reading ----------------------------------------------------------------------------------------

    @property
    def score(self) -> float:
        return self._score

    def snapshot(self) -> dict[str, Any]:
        """``{"score", "window", "alert", "features": {name: psi}, "outputs": psi}`` for the metrics JSON.

        ``window`` is the number of rows in the window now (the window is full at ``self.window``); before
        it is full the scores are of the rows so far and no alert is raised.
        """
        if self._filled == 0:
            features, outputs = np.zeros(self._n_features), (0.0 if self._summary is not None else None)
        else:
            features, outputs = self._psi()
        score = max(float(features.max(initial=0.0)), outputs or 0.0)
        return {
            "score": round(score, 4),
            "window": self._filled,
            "alert": self.alert,
            "features": {name: round(float(v), 4) for name, v in zip(self.feature_names, features)},
            "outputs": None if outputs is None else round(outputs, 4),
        }

    def retire(self) -> list[dict[str, Any]]:
        """The events to publish when this monitor is dropped (a reload brings a new reference): a
        ``drift_cleared`` when an alert is active, so no alert is left open."""
        if not self.alert:
            return []
        self.alert = False
        return [self._event("drift_cleared", self._score, [])]

    def reset(self) -> None:
        """Empty the window (the alert state is kept: a ``drift_cleared`` still follows a ``drift``)."""
        self._counts[:] = 0
        self._pos = self._filled = 0
        self._since = None
        self._next_eval = self._seen
