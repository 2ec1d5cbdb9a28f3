#!/usr/bin/env bash
# Install the real services the integration tests start (Debian/Ubuntu; run as root in CI):
# Prometheus, Alertmanager, PostgreSQL, a Java 17+ runtime and Maven, headless Chromium (the
# HTML report's rendering test), then fetch the Kafka jars (scripts/kafka.sh fetch). Idempotent: installs only what is missing, and runs
# `apt-get update` only then. Python packages are not installed here.
#
# The tests start their own instances on free ports, so the system services these packages
# would start on their default ports are kept from starting (policy-rc.d during install) and
# disabled afterwards.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVICE_PACKAGES=(prometheus prometheus-alertmanager postgresql)
# The system services those packages ship (unit / init script names).
SERVICES=(prometheus prometheus-alertmanager postgresql)

log() { echo "install-test-deps: $*" >&2; }
die() { echo "install-test-deps: error: $*" >&2; exit 1; }

installed() {  # installed PKG: true if dpkg has PKG fully installed
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

java_major() {  # major version of `java` on PATH ("1.8.0" -> 8, "17.0.15" -> 17), 0 if none
  local v
  v="$(java -version 2>&1 | sed -n 's/.*version "\(1\.\)\{0,1\}\([0-9]*\).*/\2/p' | head -n1)" || true
  echo "${v:-0}"
}

command -v dpkg-query >/dev/null 2>&1 || die "this script supports Debian/Ubuntu (apt) only"

missing=()
for pkg in "${SERVICE_PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
# Kafka 4.x needs Java 17+.
(( $(java_major) >= 17 )) || missing+=(default-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# `driftline report` is rendered and screenshotted in headless Chromium by the tests.
command -v chromium >/dev/null 2>&1 || installed chromium || missing+=(chromium)

if (( ${#missing[@]} > 0 )); then
  [[ "$(id -u)" -eq 0 ]] || die "missing ${missing[*]}; re-run as root (sudo $0)"
  log "installing: ${missing[*]}"

  # policy-rc.d exit 101 = "action forbidden": invoke-rc.d / deb-systemd-invoke then do not
  # start the services the packages install. An existing policy is left as it is.
  created_policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi

  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q </dev/null
  # --no-install-recommends: prometheus would otherwise also pull (and start) node-exporter.
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}" </dev/null

  if [[ -n "$created_policy" ]]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi

  # Packages installed just now: make sure their services are neither running nor enabled
  # (services of packages that were already here are someone else's; leave them alone).
  for svc in "${SERVICES[@]}"; do
    [[ " ${missing[*]} " == *" $svc "* ]] || continue
    if [[ -d /run/systemd/system ]]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    elif [[ -x "/etc/init.d/$svc" ]]; then
      "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
  done

  (( $(java_major) >= 17 )) ||
    die "Java 17+ needed for Kafka but 'java' is $(java_major); install e.g. openjdk-17-jre-headless"
else
  log "system packages already installed"
fi

"$HERE/kafka.sh" fetch >/dev/null
log "ok: $(prometheus --version 2>&1 | head -n1)"
log "ok: $(prometheus-alertmanager --version 2>&1 | head -n1)"
log "ok: postgresql $(ls /usr/lib/postgresql | sort -V | tail -n1), java $(java_major), $(mvn -v 2>/dev/null | head -n1 | sed 's/\x1b\[[0-9;]*m//g')"
log "ok: $(chromium --version 2>/dev/null | head -n1)"
log "ok: kafka jars in $("$HERE/kafka.sh" fetch)"
