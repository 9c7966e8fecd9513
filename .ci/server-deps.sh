#!/usr/bin/env bash
# System packages for the real-server tests (pytest -m server): PostgreSQL and headless Chromium.
#
# Idempotent: installs only what is missing, so `.ci/run` can call it on every run. Needs root (or
# sudo) on Debian/Ubuntu. Nothing is started here: the tests start their own throw-away Postgres
# cluster (initdb + pg_ctl in a temp dir) and their own Prefect server, and stop them at teardown.
set -euo pipefail

need=()
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
[ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
# fonts so that screenshots show text (chromium depends on a font, this makes sure there is a Latin one)
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
# runuser (util-linux) runs initdb as the `postgres` user when the tests run as root
command -v runuser >/dev/null 2>&1 || need+=(util-linux)

if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  # --no-install-recommends keeps chromium from pulling in a desktop's worth of packages
  $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Debian's postgresql package creates and starts a `main` cluster; the tests do not use it (they
# run their own cluster on a free port), so it is left as the package set it up.
echo "server test deps: postgres $("$(pg_bin)/postgres" --version | awk '{print $3}'), $(chromium --version 2>/dev/null || echo 'chromium missing')"
