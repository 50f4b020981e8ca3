#!/usr/bin/env bash
# Build the ecgssl images from the repository root and tag them
#   <registry>/ecgssl:<version>[-gpu]          (what params.yaml kfp.image / kfp.gpu_image use)
#   <registry>/ecgssl:<version>-<git sha>[-gpu] (immutable, for audits)
#
#   docker/build.sh                 # CPU image
#   docker/build.sh --gpu --push    # CUDA image, pushed
#   docker/build.sh --print-tags    # only print the tags (no Docker needed)
#
# Registry: $ECGSSL_REGISTRY (default ghcr.io/ecgssl). No credentials are read here: log in with
# `docker login` beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0 push=0 print=0
for arg in "$@"; do
  case "$arg" in
    --gpu) gpu=1 ;;
    --push) push=1 ;;
    --print-tags) print=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

registry=${ECGSSL_REGISTRY:-ghcr.io/ecgssl}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
sha=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
suffix="" dockerfile=docker/Dockerfile
if [ "$gpu" = 1 ]; then suffix="-gpu" dockerfile=docker/Dockerfile.gpu; fi
tags=("$registry/ecgssl:$version$suffix" "$registry/ecgssl:$version-$sha$suffix")

if [ "$print" = 1 ]; then printf '%s\n' "${tags[@]}"; exit 0; fi
docker build -f "$dockerfile" "${tags[@]/#/--tag=}" \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$sha" .
if [ "$push" = 1 ]; then for t in "${tags[@]}"; do docker push "$t"; done; fi
