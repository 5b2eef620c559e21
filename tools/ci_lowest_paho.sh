#!/usr/bin/env bash
# CI: the runtime against the lowest paho-mqtt that pyproject.toml allows.
#
# edge_runtime/mqtt/_paho.py relies on a few paho internals, checked at import; this runs the seam tests
# (tests/test_paho_seam.py, each internal against a real Mosquitto), the fast runtime tests and the seam tests with that
# paho release. The second venv holds only paho; everything else comes from the main venv (added after
# it on sys.path), so this takes seconds, not a full install. Usage: tools/ci_lowest_paho.sh [pytest args]
# Env: EDGE_MAIN_VENV (default .venv, made with .[dev] if missing), EDGE_LOW_VENV (default .venv-paho-lowest).
set -euo pipefail
cd "$(dirname "$0")/.."
MAIN=${EDGE_MAIN_VENV:-.venv}
LOW=${EDGE_LOW_VENV:-.venv-paho-lowest}

# The lower bound, read from pyproject.toml (paho-mqtt>=X,<Y): the script follows the pin when it moves.
LOWEST=$(python3 -c '
import re, sys
text = open("pyproject.toml").read()
m = re.search(r"\"paho-mqtt>=([0-9][0-9.]*)", text)
sys.exit("no paho-mqtt>=X in pyproject.toml") if not m else print(m.group(1))
')
case $LOWEST in *.*.*) ;; *) LOWEST="$LOWEST.0" ;; esac

if [ ! -x "$MAIN/bin/python" ]; then
  python3 -m venv "$MAIN"
  "$MAIN/bin/pip" install -q -e '.[dev]'
fi
rm -rf "$LOW"
"$MAIN/bin/python" -m venv --without-pip "$LOW"
site_low=$("$LOW/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site_main=$("$MAIN/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# paho first, into the new venv only (before the main venv is visible: pip must not see, or touch, its paho).
"$MAIN/bin/pip" install -q --no-deps --target "$site_low" "paho-mqtt==$LOWEST"
# Then the main venv's packages (and its editable install of edge-runtime), after the venv's own.
echo "import site; site.addsitedir('$(cd "$site_main" && pwd)')" > "$site_low/zz-edge-main-venv.pth"

"$LOW/bin/python" - "$LOWEST" <<'PY'
import sys
import paho.mqtt
import edge_runtime.mqtt._paho  # its import-time check of the internals
assert paho.mqtt.__version__ == sys.argv[1], f"paho-mqtt {paho.mqtt.__version__} is first on sys.path, not {sys.argv[1]}"
print(f"paho-mqtt {paho.mqtt.__version__} from {paho.mqtt.__file__}")
PY
exec "$LOW/bin/python" -m pytest -q -p no:cacheprovider tests/test_paho_seam.py tests/test_runtime.py tests/test_seams.py -m "not slow" "$@"
