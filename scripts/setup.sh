#!/usr/bin/env bash
# Everything a fresh machine needs for shellrent: OS packages, the virtualenv, the lease image.
# Idempotent: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in ssh:openssh-client scp:openssh-client sftp:openssh-client rsync:rsync tmux:tmux \
            debootstrap:debootstrap ssh-keygen:openssh-client ip:iproute2 iptables:iptables \
            mkfs.ext4:e2fsprogs losetup:mount sshd:openssh-server curl:curl plink:putty-tools \
            puttygen:putty-tools; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)  # Debian and Ubuntu split venv out
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

docker info >/dev/null 2>&1 || { echo "setup: the Docker engine is not reachable (is dockerd running?)" >&2; exit 1; }

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

bash scripts/build-image.sh
