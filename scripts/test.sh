#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, end-to-end tests against the real Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# What only the tests use: clients renters use besides OpenSSH (dropbear's, rclone's Go SSH, sshfs), PostgreSQL, HAProxy, a static
# busybox for the small images pushed to a registry of the tests' own, and that registry's server
# (Debian's docker-registry, unpacked into .tools: installed, its package would start a registry service).
need=()
for pair in dbclient:dropbear-bin rclone:rclone sshfs:sshfs; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)  # Debian's plain busybox is not static
# PostgreSQL's server for the store's contract suite (tests/pg.py runs a throwaway one in a temp dir).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)  # the renter port behind a balancer
if ((${#need[@]})); then
    echo "test: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v docker-registry >/dev/null && [ ! -x .tools/usr/bin/docker-registry ]; then
    echo "test: unpacking docker-registry into .tools"
    apt-get update -qq
    (cd "$(mktemp -d)" && apt-get download -qq -o APT::Sandbox::User=root docker-registry && dpkg -x docker-registry_*.deb "$OLDPWD/.tools")
fi
exec .venv/bin/python -m pytest "$@"
