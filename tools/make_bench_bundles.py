"""Build the bundles the README's benchmark figures use, into .edge-runtime/bench/ (a development tool).

    python tools/make_bench_bundles.py

- ``forest``: a 100-tree random forest on the simulated vibration spectra (16 features, 4 classes);
- ``mlp``: a small MLP (16 -> 64 -> 32 -> 4) on the same data.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converters import write_estimator_bundle
from devices.sensors import vibration_dataset

OUT = ROOT / ".edge-runtime" / "bench"

if __name__ == "__main__":
    X, y = vibration_dataset(4000, seed=0)
    forest = RandomForestClassifier(n_estimators=100, max_depth=10, random_state=0).fit(X, y)
    write_estimator_bundle(forest, OUT / "forest", name="forest")
    mlp = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=500, random_state=0)).fit(
        X, y
    )
    write_estimator_bundle(mlp, OUT / "mlp", name="mlp")
    print(f"wrote {OUT / 'forest'} and {OUT / 'mlp'}")
