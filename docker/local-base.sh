#!/usr/bin/env bash
# Make a local stand-in for the base image `python:3.11-slim-bookworm`, for machines that reach
# Debian's package mirror but no container registry. It is Debian bookworm (minbase) with its
# Python 3.11, pip and venv, imported into podman/buildah's local storage as
#   localhost/python:3.11-slim-bookworm
# so that `FROM python:3.11-slim-bookworm` in docker/Dockerfile resolves without a registry call
# (podman/buildah look in local storage first). Nothing to do when that image exists already.
#
#   docker/local-base.sh            # make it once (about 1-2 min; needs root and debootstrap)
#   docker/local-base.sh --force    # make it again
#
# The machine's extra CA certificates (/usr/local/share/ca-certificates, e.g. those of an
# intercepting proxy) are installed into it so that pip inside a build can reach the registries.
# The mirror is the first deb.debian.org-style URI apt already uses ($DEBIAN_MIRROR overrides).
set -euo pipefail

image=localhost/python:3.11-slim-bookworm
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "local-base.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

if [ "$force" = 0 ] && podman image exists "$image" 2>/dev/null; then
  echo "local-base.sh: $image exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "local-base.sh: debootstrap is missing" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '(URIs:|^deb) +https?://[^ ]+/debian/?( |$)' \
             /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
           | grep -oE 'https?://[^ ]+' | head -n1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/ecgssl-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
start=$(date +%s)
echo "local-base.sh: debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

# As in the official image: pip may install into the system Python, `python` and `pip` exist.
rm -f "$rootfs"/usr/lib/python3.11/EXTERNALLY-MANAGED
ln -sf python3 "$rootfs/usr/bin/python"
ln -sf pip3 "$rootfs/usr/bin/pip"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | podman import --quiet \
  --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$image" >/dev/null
echo "local-base.sh: made $image in $(( $(date +%s) - start )) s"
