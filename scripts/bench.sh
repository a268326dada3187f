#!/usr/bin/env bash
# Side-by-side benchmark on this machine: shellrent (ssh -> broker -> tunnel -> container) against
# OpenSSH ProxyJump (ssh -J through one sshd to a second sshd). Needs the demo running
# (scripts/demo.sh), openssh-server and hyperfine. Prints a table.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v hyperfine >/dev/null && [ -x /usr/sbin/sshd ] || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hyperfine openssh-server >/dev/null; }
size_mb=${SIZE_MB:-1024}
work=$(mktemp -d /tmp/shellrent-bench.XXXXXX)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null; rm -rf "$work"' EXIT

key=$PWD/demo/renter_key
[ -f "$key" ] || key=$(ls ~/.ssh/id_ed25519 ~/.ssh/id_ecdsa ~/.ssh/id_rsa 2>/dev/null | head -1)
mkdir -p /run/sshd
cp "$key.pub" "$work/authorized_keys"
ssh-keygen -q -t ed25519 -N '' -f "$work/hostkey"
for port in 2301 2302; do
    cat >"$work/sshd$port.conf" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $work/hostkey
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd$port.pid
PermitRootLogin yes
StrictModes no
UsePAM no
CONF
    /usr/sbin/sshd -f "$work/sshd$port.conf"
done
sleep 0.5
common=(-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -i "$key")
ours=(ssh "${common[@]}" -p 2222 rent@127.0.0.1)
jump=(ssh "${common[@]}" -J "root@127.0.0.1:2301" -p 2302 root@127.0.0.1)
# -J does not pass -o options to the jump hop; give it the same ones through a config file.
printf 'Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  IdentityFile %s\n' "$key" >"$work/config"
ours+=(-F "$work/config"); jump+=(-F "$work/config")

hyperfine -N --warmup 3 --runs 30 --export-json "$work/true.json" \
    -n shellrent "${ours[*]} true" -n proxyjump "${jump[*]} true" >/dev/null
read -r t_ours t_jump < <(python3 -c "import json,sys; r=json.load(open('$work/true.json'))['results']; print(*(f\"{x['median']*1000:.1f}\" for x in r))")

tput() { # MB/s of downloading size_mb MiB of zeros
    local start end; start=$(date +%s.%N)
    "$@" "head -c ${size_mb}M /dev/zero" | cat >/dev/null
    end=$(date +%s.%N); python3 -c "print(f'{$size_mb/($end-$start):.0f}')"; }
d_ours=$(tput "${ours[@]}"); d_jump=$(tput "${jump[@]}")

r_ours=$(.venv/bin/python scripts/rtt.py 2222 "$key" rent)
r_jump=$(.venv/bin/python scripts/rtt.py 2302 "$key" root 2301)

printf '%-34s %12s %12s\n' measure shellrent proxyjump
printf '%-34s %12s %12s\n' "ssh true, median ms" "$t_ours" "$t_jump"
printf '%-34s %12s %12s\n' "download ${size_mb} MiB, MB/s" "$d_ours" "$d_jump"
printf '%-34s %12s %12s\n' "keystroke round trip, median ms" "$r_ours" "$r_jump"
