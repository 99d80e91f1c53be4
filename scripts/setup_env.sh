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
# Show pip's output without its noisy "WARNING: Location ..." lines, and stop on failure: a non-zero pip exit, or
# an extra the package does not define (pip only warns about those, and the command would then run without it).
pip_status=0
pip_output="$("$VENV/bin/python" -m pip install -q -e "$spec" 2>&1)" || pip_status=$?
if [ -n "$pip_output" ]; then
  printf '%s\n' "$pip_output" | grep -v "^WARNING: Location" || true
fi
if [ "$pip_status" -eq 0 ] && printf '%s\n' "$pip_output" | grep -q "does not provide the extra"; then
  pip_status=1
fi
if [ "$pip_status" -ne 0 ]; then
  echo "[setup] pip install -e $spec failed (exit $pip_status)" >&2
  return "$pip_status" 2>/dev/null || exit "$pip_status"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
