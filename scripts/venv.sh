# Sourced by scripts/demo and scripts/test: make .venv (once) and install the project into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSE_PROGRESS_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)-${EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
  "$VENV/bin/pip" install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
