#!/usr/bin/env bash
# Run the product on this machine: broker on 127.0.0.1:2222 (renters) and :2223 (hosts), one hostd
# (pretend GPUs when there is no NVIDIA one), your SSH key as renter "me" with 100 credits, and one
# lease rented through `ssh ctl@`. Idempotent; `scripts/demo.sh stop` stops both daemons
# (the lease's container keeps running until its end, as it would in production).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD/demo
bin=$PWD/.venv/bin
bhome=$root/broker
hhome=$root/hostd

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "${1:-}" = stop ]; then
    for p in "$root"/broker.pid "$root"/hostd.pid; do alive "$p" && kill "$(cat "$p")"; rm -f "$p"; done
    echo "stopped"
    exit 0
fi

bash scripts/setup.sh
mkdir -p "$root"
"$bin/broker" --home "$bhome" init >/dev/null

key=""
for k in ~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa; do [ -f "$k.pub" ] && { key=$k; break; }; done
if [ -z "$key" ]; then
    key=$root/renter_key
    [ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C shellrent-demo -f "$key"
fi
"$bin/broker" --home "$bhome" renter list --json | grep -q '"name": "me"' \
    || "$bin/broker" --home "$bhome" renter add me --key "$key.pub"

if ! alive "$root/broker.pid"; then
    nohup "$bin/broker" --home "$bhome" serve --ssh 127.0.0.1:2222 --tunnel 127.0.0.1:2223 \
        >>"$root/broker.log" 2>&1 & echo $! >"$root/broker.pid"
    for _ in $(seq 100); do [ -S "$bhome/admin.sock" ] && break; sleep 0.1; done
fi

if [ ! -f "$hhome/broker.json" ]; then
    token=$("$bin/broker" --home "$bhome" host invite pc1 2>/dev/null | tail -1)
    "$bin/hostd" --home "$hhome" join 127.0.0.1:2223 "$token"
    # No NVIDIA GPU here: offer pretend ones, so the market has something to rent.
    command -v nvidia-smi >/dev/null || "$bin/hostd" --home "$hhome" config set fake_gpus 'RTX 4090:24,RTX 3060:12'
fi
"$bin/broker" --home "$bhome" ledger --renter me --json | grep -q deposit \
    || "$bin/broker" --home "$bhome" renter credit me 100
if ! alive "$root/hostd.pid"; then
    nohup "$bin/hostd" --home "$hhome" run >>"$root/hostd.log" 2>&1 & echo $! >"$root/hostd.pid"
fi
for _ in $(seq 100); do "$bin/hostd" --home "$hhome" status --json | grep -q '"connected": true' && break; sleep 0.1; done

ctl=(ssh -p 2222 -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$root/known_hosts"
     -o StrictHostKeyChecking=accept-new ctl@127.0.0.1)
for _ in $(seq 50); do [ "$("${ctl[@]}" offers --json)" != "[]" ] && break; sleep 0.2; done
if ! "${ctl[@]}" ls --json | grep -q '"state": "active"'; then
    "${ctl[@]}" rent 'gpu_ram>=12' --hours 8 --yes
fi

ikey=""
case "$key" in "$root"/*) ikey="-i $key ";; esac
echo "shellrent is running (logs in $root). Your rental's shell:"
echo "    ssh ${ikey}-p 2222 rent@localhost"
