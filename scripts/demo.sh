#!/usr/bin/env bash
# Run the product on this machine: broker on 127.0.0.1:2222 (renters) and :2223 (hosts), one hostd,
# your SSH key as renter "me", and one lease. Idempotent; `scripts/demo.sh stop` stops both daemons
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
fi
if ! alive "$root/hostd.pid"; then
    nohup "$bin/hostd" --home "$hhome" run >>"$root/hostd.log" 2>&1 & echo $! >"$root/hostd.pid"
fi
for _ in $(seq 100); do "$bin/hostd" --home "$hhome" status --json | grep -q '"connected": true' && break; sleep 0.1; done

if ! "$bin/broker" --home "$bhome" lease list --json | grep -q '"state": "active"'; then
    "$bin/broker" --home "$bhome" lease create --renter me --host pc1 --hours 8 >/dev/null
fi

ikey=""
case "$key" in "$root"/*) ikey="-i $key ";; esac
echo "shellrent is running (logs in $root). Your rental's shell:"
echo "    ssh ${ikey}-p 2222 rent@localhost"
