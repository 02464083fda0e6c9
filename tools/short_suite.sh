#!/usr/bin/env bash
# The short suite (tests/test_pythons.py) under the lowest and the highest supported Python
# found on this machine (setup.cfg: python_requires >= 3.11), each in a virtualenv of its own
# under build/pythons/ with twins-np's `course` extra only (no PyTorch). A virtualenv is made
# once and kept while setup.cfg and pyproject.toml stay the same, so a second run installs nothing.
#   bash tools/short_suite.sh [VERSION ...]     (default: the lowest and the highest found)
#   bash tools/short_suite.sh --which           (only say which Pythons it would run under)
set -euo pipefail
which_only=0
[ "${1:-}" = "--which" ] && { which_only=1; shift; }
cd "$(dirname "$0")/.."
SUPPORTED="3.11 3.12 3.13 3.14 3.15"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"

find_python() {  # the interpreter of version $1: on PATH (if it runs), else installed by pyenv
    local p
    p="$(command -v "python$1" 2>/dev/null || true)"
    if [ -n "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
        echo "$p"; return
    fi
    p="$(ls -d "$PYENV_ROOT"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1 || true)"
    if [ -n "$p" ]; then echo "$p"; return; fi
    p="$(command -v "${PYTHON:-python3}" 2>/dev/null || true)"  # the Python that runs make
    if [ -n "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
        echo "$p"
    fi
}

if [ "$#" -gt 0 ]; then
    wanted="$*"
else
    found=""
    for v in $SUPPORTED; do [ -n "$(find_python "$v")" ] && found="$found $v"; done
    if [ -z "$found" ]; then  # none of the known versions: the Python that runs make, if setup.cfg admits it
        v="$("${PYTHON:-python3}" -c 'import sys; print("%d.%d" % sys.version_info[:2]) if sys.version_info >= (3, 11) else None' 2>/dev/null || true)"
        [ -n "$v" ] && [ "$v" != None ] && [ -n "$(find_python "$v")" ] && found="$v"
    fi
    [ -n "$found" ] || { echo "short suite: no Python of $SUPPORTED found (setup.cfg: 3.11 or newer)"; exit 1; }
    set -- $found
    first="$1"; last="${!#}"
    wanted="$first"; [ "$last" != "$first" ] && wanted="$first $last"
    if [ "$last" = "$first" ]; then
        echo "short suite: only Python $first found here (of $SUPPORTED): it runs under that one alone"
    else
        echo "short suite: Pythons found:$found; running under the lowest ($first) and the highest ($last)"
    fi
fi
if [ "$which_only" = 1 ]; then
    for v in $wanted; do echo "$v $(find_python "$v")"; done
    exit 0
fi
key="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)"
status=0
for v in $wanted; do
    py="$(find_python "$v")"
    [ -n "$py" ] || { echo "short suite: python$v not found"; status=1; continue; }
    env="build/pythons/$v"
    if [ "$(cat "$env/.stamp" 2>/dev/null)" != "$key" ]; then
        start=$(date +%s)
        rm -rf "$env"
        "$py" -m venv "$env"
        if ! PYTHONWARNINGS="ignore:Editable installation" "$env/bin/pip" install -q -e ".[course]" > "$env.log" 2>&1; then
            grep -v "^WARNING: Location" "$env.log"; exit 1
        fi
        echo "$key" > "$env/.stamp"
        echo "short suite: $env made in $(( $(date +%s) - start )) s, $(du -sh "$env" | cut -f1)"
    fi
    echo "short suite: Python $("$env/bin/python" -c 'import sys; print(sys.version.split()[0])')"
    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 TQDM_DISABLE=1 "$env/bin/python" -m pytest tests/test_pythons.py -q \
        -p no:cacheprovider -o addopts="-ra --strict-markers" || status=1
done
exit $status
