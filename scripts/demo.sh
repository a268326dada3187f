#!/usr/bin/env bash
# Run the product on this machine: broker on 127.0.0.1:2222 (renters) and :2223 (hosts), one hostd
# (pretend GPUs when there is no NVIDIA one), your SSH key as renter "me" with 100 credits from a
# voucher, and one lease rented through `ssh ctl@`. Idempotent.
#   bash scripts/demo.sh [--port N]   renters on N, hosts on N+1 (or DEMO_PORT=N; default 2222);
#                                     the first run's port is kept for the later ones
#   bash scripts/demo.sh stop         release the demo's lease, then stop broker and hostd
#   bash scripts/demo.sh clean        stop, then remove the demo's state (demo/), workspaces included
set -euo pipefail
cd "$(dirname "$0")/.."
root=${DEMO_DIR:-$PWD/demo}  # the demo's state (DEMO_DIR: somewhere else)
bin=$PWD/.venv/bin
bhome=$root/broker
hhome=$root/hostd

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
die() { echo "demo: $*" >&2; exit 1; }  # its words joined by one space

cmd=run port=${DEMO_PORT:-}
while (($#)); do
    case "$1" in
        stop|clean) cmd=$1 ;;
        --port) [ $# -ge 2 ] || die "--port needs a number"; port=$2; shift ;;
        --port=*) port=${1#--port=} ;;
        *) die "unknown argument $1 (usage: bash scripts/demo.sh [--port N] | stop | clean)" ;;
    esac
    shift
done
saved=$(cat "$root/port" 2>/dev/null || true)
if [ -n "$saved" ] && [ -n "$port" ] && [ "$port" != "$saved" ]; then
    die "this demo was set up on port $saved; to move it: bash scripts/demo.sh clean, then --port $port"
fi
port=${port:-${saved:-2222}}
[[ "$port" =~ ^[0-9]+$ ]] && ((port >= 1 && port < 65535)) || die "bad port $port: a number from 1 to 65534"
tport=$((port + 1))

key=""
for k in ~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa; do [ -f "$k.pub" ] && { key=$k; break; }; done
[ -n "$key" ] || key=$root/renter_key
ctl=(ssh -p "$port" -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile="$root/known_hosts"
     -o StrictHostKeyChecking=accept-new -o LogLevel=ERROR ctl@127.0.0.1)

if [ "$cmd" != run ]; then
    if alive "$root/broker.pid"; then  # the lease ends first: its container goes, its unused time is refunded
        for lease in $("${ctl[@]}" ls --json 2>/dev/null | "$bin/python" -c \
                'import json, sys; print(" ".join(x["id"] for x in json.load(sys.stdin) if x["state"] == "active"))'); do
            "${ctl[@]}" release "$lease" || true
        done
    fi
    label=$("$bin/hostd" --home "$hhome" status --json 2>/dev/null | "$bin/python" -c \
            'import json, sys; print(json.load(sys.stdin).get("owner_label") or "")' 2>/dev/null || true)
    for p in "$root"/broker.pid "$root"/hostd.pid; do
        if alive "$p"; then
            kill "$(cat "$p")"
            for _ in $(seq 100); do alive "$p" || break; sleep 0.1; done
        fi
        rm -f "$p"
    done
    if [ "$cmd" = clean ]; then
        [ -z "$label" ] || docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null
        [ -z "$label" ] || docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null
        [ -z "$label" ] || docker volume ls -q --filter "label=$label" | xargs -r docker volume rm >/dev/null
        grep -o "$root/hostd/workspaces/[0-9a-f]*" /proc/mounts | xargs -r -n1 umount -l
        rm -rf "$root"
        echo "stopped and removed $root"
        exit 0
    fi
    echo "stopped"
    exit 0
fi

taken() { ! "$bin/python" -c "import socket, sys; socket.create_server(('127.0.0.1', int(sys.argv[1]))).close()" "$1" \
          2>/dev/null; }
bash scripts/setup.sh
if ! alive "$root/broker.pid"; then
    for p in "$port" "$tport"; do
        taken "$p" && die "port $p on 127.0.0.1 is taken by another program: run bash scripts/demo.sh --port N" \
                          "(renters on N, hosts on N+1), or stop what holds it (ss -ltnp 'sport = :$p')"
    done
fi
mkdir -p "$root"
echo "$port" >"$root/port"
"$bin/broker" --home "$bhome" init >/dev/null
[ -f "$key" ] || ssh-keygen -q -t ed25519 -N '' -C shellrent-demo -f "$key"
"$bin/broker" --home "$bhome" renter list --json | grep -q '"name": "me"' \
    || "$bin/broker" --home "$bhome" renter add me --key "$key.pub"

if ! alive "$root/broker.pid"; then
    nohup "$bin/broker" --home "$bhome" serve --ssh "127.0.0.1:$port" --tunnel "127.0.0.1:$tport" \
        >>"$root/broker.log" 2>&1 & echo $! >"$root/broker.pid"
    for _ in $(seq 100); do [ -S "$bhome/admin.sock" ] && break; sleep 0.1; done
    alive "$root/broker.pid" || die "the broker did not start: see $root/broker.log"
fi

if [ ! -f "$hhome/broker.json" ]; then
    token=$("$bin/broker" --home "$bhome" host invite pc1 2>/dev/null | tail -1)
    "$bin/hostd" --home "$hhome" join "127.0.0.1:$tport" "$token"
    # No NVIDIA GPU here: offer pretend ones, so the market has something to rent.
    command -v nvidia-smi >/dev/null || "$bin/hostd" --home "$hhome" config set fake_gpus 'RTX 4090:24,RTX 3060:12'
fi
if ! "$bin/broker" --home "$bhome" ledger --renter me --json | grep -q '"voucher"'; then
    "${ctl[@]}" redeem "$("$bin/broker" --home "$bhome" voucher create 100)"  # credit, as a shop would sell it
fi
if ! alive "$root/hostd.pid"; then
    nohup "$bin/hostd" --home "$hhome" run >>"$root/hostd.log" 2>&1 & echo $! >"$root/hostd.pid"
fi
for _ in $(seq 100); do "$bin/hostd" --home "$hhome" status --json | grep -q '"connected": true' && break; sleep 0.1; done

for _ in $(seq 50); do [ "$("${ctl[@]}" offers --json)" != "[]" ] && break; sleep 0.2; done
if ! "${ctl[@]}" ls --json | grep -q '"state": "active"'; then
    "${ctl[@]}" rent 'gpu_ram>=12' --hours 8 --yes
fi

ikey=""
case "$key" in "$root"/*) ikey="-i $key ";; esac
echo "shellrent is running (logs in $root). Your rental's shell:"
echo "    ssh ${ikey}-p $port rent@localhost"
