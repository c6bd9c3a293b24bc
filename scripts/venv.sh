# Sourced by scripts/demo and scripts/test: make .venv (once) and install the project into it. EXTRAS names the
# extras: scripts/test installs `test` (which includes `server`), scripts/demo `server` (and `rpa` for --rpa).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SSE_PROGRESS_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)-${EXTRAS:-base}"
if [ ! -f "$stamp" ]; then
  if ! "$VENV/bin/pip" install -q -e "$ROOT${EXTRAS:+[$EXTRAS]}"; then
    echo "could not install the project into $VENV; once the cause above is fixed, run:" >&2
    echo "  $VENV/bin/pip install -e '$ROOT${EXTRAS:+[$EXTRAS]}'" >&2
    exit 1
  fi
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
