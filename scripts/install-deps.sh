#!/usr/bin/env bash
# Installs the Debian packages taskexec needs to build and test, if any is missing.
# Called by the Makefile; safe to run again (it does nothing when all are there).
set -euo pipefail

pkgs=(gcc make pkg-config libmicrohttpd-dev libjansson-dev libsqlite3-dev uuid-dev
      libcmocka-dev python3-pytest python3-requests python3-yaml python3-rich sqlite3 libpq-dev
      nettle-dev libcurl4-openssl-dev libwslay-dev python3-websockets prometheus clang libclang-rt-14-dev
      postgresql-15 postgresql-client-15 chromium fonts-dejavu-core
      systemd docker-compose)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# systemd (systemd-analyze) and docker-compose check deploy/'s units and compose file
# (tests/it/test_deploy.py; docker-compose reads a compose file without a Docker daemon).
# node and npm fetch the OpenAPI validator the tests use (any recent node will do).
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
