# shellcheck shell=bash
# Sourced by scripts/test and scripts/serve: make .venv on first use, and reinstall the project into it
# only when its packaging files changed, so that an unchanged checkout starts in well under a second.

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"

ensure_venv() {
  local stamp="$venv/.installed-from" wanted
  if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv" >&2
    "${PYTHON:-python3}" -m venv "$venv"
  fi
  # The stamp holds the checksums of the files pip read last time; a content check, unlike mtimes,
  # is not fooled by a fresh clone or a checkout that touches every file.
  wanted="$(cd "$repo_root" && sha256sum setup.cfg pyproject.toml)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
    echo "installing the project into $venv (setup.cfg or pyproject.toml changed)" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input -e "$repo_root[test]"
    printf '%s' "$wanted" >"$stamp"
  fi
}
