#!/usr/bin/env bash
# Build the default lease image locally (no registry is reachable): debootstrap a small Debian and
# `docker import` it. Cached by name: does nothing when the image already exists.
set -euo pipefail
image=${1:-${SHELLRENT_IMAGE:-shellrent-base:bookworm}}
suite=${SUITE:-bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "image $image already present"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "build-image: debootstrap is not installed" >&2; exit 1; }

root=$(mktemp -d /tmp/shellrent-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase \
    --include=bash,coreutils,procps,tmux,rsync,openssh-sftp-server,openssh-client,python3,less,ca-certificates \
    "$suite" "$root" "$mirror" >/tmp/shellrent-debootstrap.log 2>&1 \
    || { tail -20 /tmp/shellrent-debootstrap.log >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    -c 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'WORKDIR /workspace' -c 'CMD ["sleep", "infinity"]' \
    - "$image" >/dev/null
echo "built image $image"
