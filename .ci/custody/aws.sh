#!/usr/bin/env bash
# Installs moto_server (PyPI `moto[server]`, an emulator of the AWS KMS API) for the tests of
# keyrot-kms's `aws` feature, into the venv ${KEYROT_CUSTODY_VENV:-$PWD/target/custody-venv}.
# Idempotent and quiet; stdout is only the `export` lines for `.ci/run` to eval.
set -euo pipefail

venv="${KEYROT_CUSTODY_VENV:-$PWD/target/custody-venv}"

apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
    if ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
        command -v python3 >/dev/null 2>&1 || apt_install python3 python3-venv
        if ! python3 -m venv "$venv" >&2 2>/dev/null; then
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv" >&2
        fi
    fi
    # --force-reinstall: in a venv that was moved or copied, the installed scripts' first
    # line still names the old path, so moto_server does not start although moto is there.
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall 'moto[server]>=5.1,<6' >&2
fi

echo "export KEYROT_TEST_MOTO_SERVER=$venv/bin/moto_server"
