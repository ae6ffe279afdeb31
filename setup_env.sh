#!/usr/bin/env bash
# Creates .venv (or $RLOPS_VENV) on Python 3.9 or 3.10 and installs the locked dependencies with uv.
# Idempotent: when the venv already matches the lock file and setup.py it returns in well under a second.
#
# Python is taken, in order, from $RLOPS_PYTHON, python3.10 / python3.9 on PATH, pyenv's versions,
# and finally (Debian 12, as root) Debian 11's python3.9 packages. RLOPS_PYTHON_ROUTE=debian forces the last;
# RLOPS_PYTHON_VERSION=3.9 looks for 3.9 only (`make test-py39` builds .venv39 so).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${RLOPS_VENV:-.venv}
TOOLS=.cache/tools
log() { echo "[setup] $*" >&2; }

runs_ok() { [ -n "$1" ] && "$1" -c 'import sys; assert sys.version_info[:2] in ((3, 9), (3, 10))' 2>/dev/null; }

find_python() {
  if [ -n "${RLOPS_PYTHON:-}" ]; then
    runs_ok "$RLOPS_PYTHON" || { log "RLOPS_PYTHON=$RLOPS_PYTHON is not a working Python 3.9 or 3.10"; exit 1; }
    echo "$RLOPS_PYTHON"; return
  fi
  if [ "${RLOPS_PYTHON_ROUTE:-}" != debian ]; then
    local candidate root version
    root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")
    for version in ${RLOPS_PYTHON_VERSION:-3.10 3.9}; do  # 3.10 first, wherever it is
      for candidate in "$(command -v "python$version" || true)" "$root"/versions/"$version".*/bin/"python$version"; do
        if runs_ok "$candidate"; then echo "$candidate"; return; fi
      done
    done
  fi
  [ "${RLOPS_PYTHON_VERSION:-3.9}" = 3.9 ] || { log "no Python $RLOPS_PYTHON_VERSION found"; exit 1; }
  install_debian_python39
  echo /usr/bin/python3.9
}

# Debian 12 has no Python 3.9 or 3.10; Debian 11 (bullseye) packages of python3.9 install cleanly beside it.
# Its distutils package conflicts with Debian 12's, so distutils and lib2to3 are unpacked from the .debs.
install_debian_python39() {
  if runs_ok /usr/bin/python3.9 && /usr/bin/python3.9 -c 'import distutils.sysconfig' 2>/dev/null \
      && [ -f /usr/include/python3.9/Python.h ]; then
    return
  fi
  [ "$(id -u)" = 0 ] || { log "no Python 3.9/3.10 found; install one or rerun as root for the Debian 11 route"; exit 1; }
  grep -qs '^VERSION_CODENAME=bookworm' /etc/os-release || { log "no Python 3.9/3.10 found and this is not Debian 12"; exit 1; }
  log "installing python3.9 from Debian 11 (bullseye)"
  local sources=/etc/apt/sources.list.d/rlops-bullseye.sources
  if [ ! -f "$sources" ]; then
    local mirror security
    mirror=$(grep -rhoE '^URIs: *\S+/debian/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}')
    security=$(grep -rhoE '^URIs: *\S+/debian-security/?$' /etc/apt/sources.list.d/ 2>/dev/null | head -n1 | awk '{print $2}')
    cat > "$sources" <<SRC
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: bullseye
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${security:-http://deb.debian.org/debian-security}
Suites: bullseye-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.9 python3.9-dev >/dev/null
  local debs
  debs=$(mktemp -d)
  chmod 755 "$debs"  # apt's download sandbox user must be able to write there
  (cd "$debs" && apt-get download -qq python3-distutils/bullseye python3-lib2to3/bullseye)
  for deb in "$debs"/*.deb; do dpkg -x "$deb" "$debs/root"; done
  cp -r "$debs/root/usr/lib/python3.9/." /usr/lib/python3.9/
  rm -rf "$debs"
  runs_ok /usr/bin/python3.9 || { log "python3.9 did not install"; exit 1; }
}

find_uv() {
  if command -v uv >/dev/null 2>&1; then command -v uv; return; fi
  if [ ! -x "$TOOLS/bin/uv" ]; then
    log "installing uv into $TOOLS"
    python3 -m pip install --quiet --disable-pip-version-check --target "$TOOLS" uv >&2
  fi
  echo "$TOOLS/bin/uv"
}

stamp_of() {  # what the environment was built from: lock, package metadata, top-level packages
  { cat "$1" setup.py; ls -d -- */__init__.py; } | sha256sum | cut -c1-16
}

if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.rlops-stamp" ]; then
  version=$("$VENV/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null || true)
  if [ -n "$version" ] && [ "$(cat "$VENV/.rlops-stamp")" = "$(stamp_of "requirements-py$version.lock")" ]; then
    exit 0
  fi
fi

python=$(find_python)
version=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
uv=$(find_uv)
log "building $VENV with $python"
if ! [ -x "$VENV/bin/python" ] || [ "$("$VENV/bin/python" -c 'import sys; print("%d%d" % sys.version_info[:2])' 2>/dev/null)" != "$version" ]; then
  rm -rf "$VENV"
  "$uv" venv --quiet --python "$python" "$VENV"
fi
"$uv" pip sync --quiet --python "$VENV/bin/python" "requirements-py$version.lock"
"$uv" pip install --quiet --python "$VENV/bin/python" --no-deps -e .
stamp_of "requirements-py$version.lock" > "$VENV/.rlops-stamp"
log "ready: $VENV ($("$VENV/bin/python" --version))"
