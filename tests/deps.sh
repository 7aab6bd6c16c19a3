#!/usr/bin/env bash
# Installs the Debian packages kbatch needs to build and test, when missing.
# Idempotent and quiet when everything is there. Python test packages go into
# a virtualenv under build/venv (see tests/e2e/requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential pkg-config librdkafka-dev libcurl4-openssl-dev libjansson-dev
      libavro-dev libconfig-dev libmicrohttpd-dev libssl-dev libcriterion-dev
      python3 python3-venv default-jre-headless maven curl valgrind)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Java and Maven may come from elsewhere (e.g. a JDK already on PATH).
if command -v java >/dev/null 2>&1; then missing=("${missing[@]/default-jre-headless}"); fi
if command -v mvn >/dev/null 2>&1; then missing=("${missing[@]/maven}"); fi
read -r -a missing <<<"${missing[*]}"
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python virtualenv for the e2e tests (pytest, confluent-kafka, ...).
venv=build/venv
req=tests/e2e/requirements.txt
if [ -f "$req" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  stamp="$venv/.req-stamp"
  if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
    echo "deps: installing Python test packages" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$stamp"
  fi
fi
