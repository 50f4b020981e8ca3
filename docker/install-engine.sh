#!/usr/bin/env bash
# Install a daemonless container engine from Debian's packages: buildah (builds), podman (runs;
# `podman system service` also serves the Docker API for kfp.local.DockerRunner), runc, and
# debootstrap for docker/local-base.sh. Nothing to do when they are all there already.
# Needs root and apt-get (Debian/Ubuntu); exits 3 when it cannot install, 0 when ready.
#
#   docker/install-engine.sh
set -euo pipefail

tools=(buildah podman runc debootstrap)
missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ ${#missing[@]} -eq 0 ]; then echo "install-engine.sh: ${tools[*]} present"; exit 0; fi

if [ "$(id -u)" != 0 ]; then
  echo "install-engine.sh: ${missing[*]} missing and not root (cannot apt-get install)" >&2
  exit 3
fi
if ! command -v apt-get >/dev/null; then
  echo "install-engine.sh: ${missing[*]} missing and no apt-get" >&2
  exit 3
fi
start=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null >/dev/null
apt-get install -y -qq --no-install-recommends buildah podman runc debootstrap uidmap \
  containernetworking-plugins </dev/null >/dev/null
echo "install-engine.sh: installed ${missing[*]} in $(( $(date +%s) - start )) s"
