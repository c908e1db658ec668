# Shared by scripts/serve, scripts/smoke-wheel and .ci/run (sourced, not run).

# The first Python >= 3.12 found: pyenv's 3.12 shim form first, then plain python3.12/3.13/python3.
pick_python() {
  if PYENV_VERSION=3.12.1 python3.12 -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
    echo "env PYENV_VERSION=3.12.1 python3.12"; return
  fi
  local py
  for py in python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  echo "no Python >= 3.12 found (mitmproxy 12 needs it): install python3.12" >&2
  return 1
}

# make_venv DIR: a fresh virtualenv with a current pip (quiet; its tail is printed on failure). The log
# is DIR/make-venv.log, inside the venv: beside it (DIR.log) it would be an untracked file in the checkout.
make_venv() {
  local dir=$1 py
  py=$(pick_python) || return 1
  rm -rf "$dir"
  $py -m venv "$dir"
  quietly "$dir/make-venv.log" "$dir/bin/python" -m pip install --upgrade pip
}

# quietly LOG CMD...: run CMD with its output in LOG; on failure print the log's tail and fail.
quietly() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    echo "failed: $*" >&2
    grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -n 30 >&2
    return 1
  fi
}
