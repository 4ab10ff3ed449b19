#!/usr/bin/env bash
# Builds Anxin's image where no image registry is reachable (this project's
# CI): the base from Debian's packages with debootstrap, the binaries from
# this checkout (cargo), then `podman build --isolation chroot`.
#
#   deploy/container/build-image.sh                 # release binaries, tag localhost/anxin:dev
#   PROFILE=debug TAG=localhost/anxin:ci deploy/container/build-image.sh
#
# Needs root, podman and debootstrap (Debian: apt-get install podman debootstrap).
# With a registry at hand, `podman build -f deploy/container/Containerfile .`
# compiles in the image instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-release}
TAG=${TAG:-localhost/anxin:dev}
BASE=${BASE_IMAGE:-localhost/debian-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! podman image exists "$BASE"; then
  root=$(mktemp -d /var/tmp/anxin-base.XXXXXX)
  echo "making the base image $BASE with debootstrap (about a minute)..."
  if ! debootstrap --variant=minbase bookworm "$root" "$MIRROR" > "$root.log" 2>&1; then
    tail -20 "$root.log" >&2
    echo "debootstrap failed (full log: $root.log); is $MIRROR reachable? DEBIAN_MIRROR= names another" >&2
    exit 1
  fi
  tar -C "$root" -c . | podman import --quiet - "$BASE" > /dev/null
  rm -rf "$root" "$root.log"
fi

echo "building the binaries ($PROFILE)..."
flags=(--locked --bins -p anxin-server -p anxin-gateway -p anxin-sim)
[[ $PROFILE == release ]] && flags+=(--release)
cargo build --quiet "${flags[@]}"

echo "building the image $TAG..."
podman build --quiet --isolation chroot \
  -f deploy/container/Containerfile \
  --build-arg BINARIES=prebuilt \
  --build-arg PROFILE="$PROFILE" \
  --build-arg BASE_IMAGE="$BASE" \
  -t "$TAG" . > /dev/null
echo "built $TAG"
