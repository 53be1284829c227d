#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need on a Debian machine, idempotently:
# Debian packages (ODBC drivers, database servers, network tools), then a venv with fos and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  unixodbc odbcinst odbc-postgresql odbc-mariadb libsqliteodbc tdsodbc
  postgresql mariadb-server sqlite3
  iproute2 iputils-arping procps keepalived
  openssh-server openssh-client rsync
  chromium openssl  # the status page is tested in a real headless browser; the SMTP tests make a certificate
  python3 python3-venv python3-dev gcc
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: these Debian packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # A package's postinst must not start the distribution's own database services: the tests run their own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.fos && chmod +x /usr/sbin/policy-rc.d.fos
  if [ ! -e /usr/sbin/policy-rc.d ]; then cp /usr/sbin/policy-rc.d.fos /usr/sbin/policy-rc.d; added_policy=1; fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ "${added_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  rm -f /usr/sbin/policy-rc.d.fos
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fos-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[test]'
  touch "$stamp"
fi
