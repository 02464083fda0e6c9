#!/usr/bin/env bash
# The short suite (tests/test_pythons.py) under the lowest and the highest supported Python
# found on this machine (setup.cfg: python_requires >= 3.11), each in a virtualenv of its own
# under build/pythons/ with twins-np's `course` extra only (no PyTorch). A virtualenv is made
# once and kept while setup.cfg and pyproject.toml stay the same, so a second run installs nothing.
#   bash tools/short_suite.sh [VERSION ...]     (default: the lowest and the highest found)
set -euo pipefail
cd "$(dirname "$0")/.."
SUPPORTED="3.11 3.12 3.13 3.14"
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"

find_python() {  # the interpreter of version $1: on PATH (if it runs), else installed by pyenv
    local p
    p="$(command -v "python$1" 2>/dev/null || true)"
    if [ -n "$p" ] && "$p" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$1'.split('.'))))" 2>/dev/null; then
        echo "$p"; return
    fi
    p="$(ls -d "$PYENV_ROOT"/versions/"$1".*/bin/python"$1" 2>/dev/null | sort -V | tail -1 || true)"
    [ -n "$p" ] && echo "$p"
}

if [ "$#" -gt 0 ]; then
    wanted="$*"
else
    found=""
    for v in $SUPPORTED; do [ -n "$(find_python "$v")" ] && found="$found $v"; done
    [ -n "$found" ] || { echo "short suite: no Python of $SUPPORTED found"; exit 1; }
    set -- $found
    first="$1"; last="${!#}"
    wanted="$first"; [ "$last" != "$first" ] && wanted="$first $last"
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
