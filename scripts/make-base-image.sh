#!/usr/bin/env bash
# Build a Debian bookworm base image with Python 3 (no registry needed) and
# import it into the current podman as $BASE_IMAGE_NAME.
#
#   source scripts/podman-env.sh && scripts/make-base-image.sh [NAME]
#
# Used where registry images (python:3.12-slim) cannot be pulled: debootstrap
# fetches from the Debian apt mirror, `podman import` turns the tree into an
# image. The tarball is cached under $BAZAAR_BASE_CACHE (default
# /tmp/bazaar-base-cache) so later runs take seconds, not minutes.
set -euo pipefail

NAME="${1:-localhost/bazaar-base:bookworm}"
CACHE_DIR="${BAZAAR_BASE_CACHE:-/tmp/bazaar-base-cache}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,python3-pip,ca-certificates"
TARBALL="$CACHE_DIR/bookworm-minbase-python3.tar"

log() { printf '[base-image] %s\n' "$*" >&2; }

if [[ ! -s "$TARBALL" ]]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed"; exit 1; }
    mkdir -p "$CACHE_DIR"
    root="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm (minbase + $PACKAGES) from $MIRROR; takes a few minutes"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
    # What a slim image leaves out: apt lists and caches, docs, man pages.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
    # The apt sources debootstrap wrote point at the build mirror; keep them, they are public.
    tar -C "$root" --numeric-owner -cf "$TARBALL.part" .
    mv "$TARBALL.part" "$TARBALL"
    log "cached $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

log "podman import $TARBALL as $NAME"
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$NAME" >/dev/null
echo "$NAME"
