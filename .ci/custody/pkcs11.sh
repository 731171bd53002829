#!/usr/bin/env bash
# Installs what the PKCS#11 custody tests need (SoftHSM2, and OpenSC's pkcs11-tool for
# operators' recipes) when missing, then prints the environment for them:
#   eval "$(bash .ci/custody/pkcs11.sh)"
# Idempotent; quiet (diagnostics on stderr).
set -euo pipefail

need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
command -v pkcs11-tool >/dev/null 2>&1 || need+=(opensc)
if ((${#need[@]})); then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  echo "installing ${need[*]}" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi

module="${KEYROT_TEST_SOFTHSM2_MODULE:-}"
if [ -z "$module" ]; then
  for candidate in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so /usr/local/lib/softhsm/libsofthsm2.so; do
    if [ -f "$candidate" ]; then module="$candidate"; break; fi
  done
fi
if [ -z "$module" ] || [ ! -f "$module" ]; then
  echo "libsofthsm2.so not found after installing softhsm2" >&2
  exit 1
fi
echo "export KEYROT_TEST_SOFTHSM2_MODULE=$module"
