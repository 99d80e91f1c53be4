# Sourced by the quick-start scripts: creates ./.venv if needed and installs the package with the given extras.
# Usage: source scripts/setup_env.sh [extras]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KERAS_DEEPLAB_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
echo "[setup] pip install -e $spec"
"$VENV/bin/python" -m pip install -q -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
export PATH="$VENV/bin:$PATH"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
cd "$ROOT"
