#!/usr/bin/env bash
# Build the ecgssl images from the repository root and tag them
#   <registry>/ecgssl:<version>[-gpu]          (what params.yaml kfp.image / kfp.gpu_image use)
#   <registry>/ecgssl:<version>-<git sha>[-gpu] (immutable, for audits)
#
#   docker/build.sh                 # CPU image (torch from PyTorch's CPU index)
#   docker/build.sh --gpu --push    # GPU image (PyPI's CUDA build of torch), pushed
#   docker/build.sh --print-tags    # only print the tags (no engine needed)
#   docker/build.sh --torch-wheels /opt/wheels   # torch from a wheel on disk (no index needed)
#
# Options: --engine docker|buildah|podman (default: docker when its daemon answers, else buildah,
# else podman); --torch-index URL (the TORCH_INDEX build argument; "" = PyPI); --base IMAGE (the
# BASE_IMAGE build argument, default python:3.11-slim-bookworm; docker/local-base.sh makes a
# local stand-in where no registry is reachable; --local-base runs it first, with buildah/podman);
# --no-cache. $ECGSSL_BUILD_ENGINE and $ECGSSL_TORCH_WHEELS set the defaults of --engine and
# --torch-wheels.
# Registry: $ECGSSL_REGISTRY (default ghcr.io/ecgssl). No credentials are read here: log in with
# `docker login` (or `podman login`) beforehand. buildah/podman keep their layer cache in their
# local storage, so a rebuild reruns only the steps whose inputs changed.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0 push=0 print=0 nocache=0 localbase=0
engine=${ECGSSL_BUILD_ENGINE:-} wheels=${ECGSSL_TORCH_WHEELS:-} base="" torch_index=unset
while [ $# -gt 0 ]; do
  case "$1" in
    --gpu) gpu=1 ;;
    --push) push=1 ;;
    --print-tags) print=1 ;;
    --no-cache) nocache=1 ;;
    --local-base) localbase=1 ;;
    --engine) engine=${2:?--engine needs a value}; shift ;;
    --engine=*) engine=${1#*=} ;;
    --torch-wheels) wheels=${2:?--torch-wheels needs a folder}; shift ;;
    --torch-wheels=*) wheels=${1#*=} ;;
    --torch-index) torch_index=${2?--torch-index needs a URL}; shift ;;
    --torch-index=*) torch_index=${1#*=} ;;
    --base) base=${2:?--base needs an image}; shift ;;
    --base=*) base=${1#*=} ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

registry=${ECGSSL_REGISTRY:-ghcr.io/ecgssl}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
sha=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
suffix="" dockerfile=docker/Dockerfile
if [ "$gpu" = 1 ]; then suffix="-gpu" dockerfile=docker/Dockerfile.gpu; fi
tags=("$registry/ecgssl:$version$suffix" "$registry/ecgssl:$version-$sha$suffix")

if [ "$print" = 1 ]; then printf '%s\n' "${tags[@]}"; exit 0; fi

if [ -z "$engine" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then engine=docker
  elif command -v buildah >/dev/null; then engine=buildah
  elif command -v podman >/dev/null; then engine=podman
  else
    echo "build.sh: no container engine: need a running Docker daemon, buildah or podman" >&2
    exit 1
  fi
fi

if [ "$localbase" = 1 ] && [ "$engine" != docker ]; then bash docker/local-base.sh; fi

# The source repository for the OCI label: $ECGSSL_SOURCE_URL, else an https origin, else the
# project's home.
source_url=${ECGSSL_SOURCE_URL:-$(git remote get-url origin 2>/dev/null || true)}
case "$source_url" in https://*) ;; *) source_url=https://github.com/ecgssl/ecgssl ;; esac

args=(-f "$dockerfile" "${tags[@]/#/--tag=}"
      --build-arg "VERSION=$version" --build-arg "REVISION=$sha"
      --build-arg "SOURCE=$source_url"
      # Also as --label, set on the image itself: buildah's layer cache (--layers) reuses the
      # Dockerfile's LABEL step though its ARG changed, so a commit that changes nothing in
      # the image would keep the previous build's revision.
      --label "org.opencontainers.image.version=$version"
      --label "org.opencontainers.image.revision=$sha"
      --label "org.opencontainers.image.source=$source_url")
[ -n "$base" ] && args+=(--build-arg "BASE_IMAGE=$base")
[ "$nocache" = 1 ] && args+=(--no-cache)

# torch from a wheel on disk: link (or copy) it into the build context's docker/wheels/ and
# take torch's dependencies from PyPI; the wheel is removed again when the build ends.
staged=()
cleanup() { if [ ${#staged[@]} -gt 0 ]; then rm -f "${staged[@]}"; fi; }
trap cleanup EXIT
if [ -n "$wheels" ]; then
  if [ "$gpu" = 1 ]; then pattern='torch-2.13.0-*.whl'; else pattern='torch-2.13.0+cpu-*.whl'; fi
  found=$(find "$wheels" -maxdepth 1 -name "$pattern" | head -n1)
  [ -n "$found" ] || { echo "build.sh: no $pattern in $wheels" >&2; exit 1; }
  dest=docker/wheels/$(basename "$found")
  if [ ! -e "$dest" ]; then
    ln "$found" "$dest" 2>/dev/null || cp "$found" "$dest"
    staged+=("$dest")
  fi
  [ "$torch_index" = unset ] && torch_index=""
  echo "build.sh: torch from $found"
fi
[ "$torch_index" != unset ] && args+=(--build-arg "TORCH_INDEX=$torch_index")

echo "build.sh: $engine builds $dockerfile as ${tags[*]}"
start=$(date +%s)
case "$engine" in
  docker) docker build "${args[@]}" . ;;
  # chroot isolation: RUN steps use the host's network (the registries) and need no user
  # namespaces; --layers keeps every step in the local layer cache.
  buildah) buildah bud --isolation chroot --layers "${args[@]}" . ;;
  podman) podman build --isolation chroot --layers "${args[@]}" . ;;
  *) echo "build.sh: unknown engine $engine (docker, buildah or podman)" >&2; exit 2 ;;
esac
echo "build.sh: built in $(( $(date +%s) - start )) s"

if [ "$push" = 1 ]; then
  for t in "${tags[@]}"; do
    if [ "$engine" = docker ]; then docker push "$t"; else podman push "$t"; fi
  done
fi
