#!/bin/bash
# The Vagrant provisioning without VMs (`cargo xtask vagrant-chroot-test`):
# three Debian 12 roots (mmdebstrap minbase) in three network namespaces
# joined by two bridges (ring0 192.168.56.0/24, ring1 192.168.57.0/24),
# each gets the .deb (dpkg -i), its /etc/baton/baton.toml rendered by
# provision.sh from baton.toml.in, and the one secret. The agents run as
# the unit's ExecStart= (`/usr/bin/baton run --config /etc/baton/baton.toml`
# in the root; no systemd there). Checks: all three join and web runs on
# node1; node1 crashes (every process of its root SIGKILLed, its links
# down); a client on ring0 is served by node2 or node3.
#   chroot-test.sh DEB ROOT_TARBALL WORKDIR
set -euo pipefail
deb=$1 tarball=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
p="bvct$$"
rm -rf "$work"; mkdir -p "$work"

procs_of() { for q in /proc/[0-9]*; do [ "$(readlink "$q/root" 2>/dev/null)" = "$1" ] && basename "$q"; done; true; }
cleanup() {
    set +e
    for i in 1 2 3; do
        r=$work/r$i
        pids=$(procs_of "$r"); [ -n "$pids" ] && kill -9 $pids
        umount -R "$r/proc" "$r/sys" "$r/dev" 2>/dev/null
        rm -rf "/sys/fs/bpf/$p-n$i"
        ip netns del "$p-n$i" 2>/dev/null
    done
    ip netns del "$p-c" 2>/dev/null
    ip netns del "$p-sw" 2>/dev/null
}
trap cleanup EXIT

ip netns add "$p-sw"
for l in 0 1; do ip -n "$p-sw" link add "br$l" type bridge; ip -n "$p-sw" link set "br$l" up; done
for i in 1 2 3; do
    ns=$p-n$i
    ip netns add "$ns"; ip -n "$ns" link set lo up
    for l in 0 1; do
        ip link add "eth$((l + 1))" netns "$ns" type veth peer name "p${i}l$l" netns "$p-sw"
        ip -n "$p-sw" link set "p${i}l$l" master "br$l"; ip -n "$p-sw" link set "p${i}l$l" up
        ip -n "$ns" addr add "192.168.$((56 + l)).$((10 + i))/24" dev "eth$((l + 1))"
        ip -n "$ns" link set "eth$((l + 1))" up
    done
done
# The client, on ring0.
ip netns add "$p-c"; ip -n "$p-c" link set lo up
ip link add eth0 netns "$p-c" type veth peer name pc netns "$p-sw"
ip -n "$p-sw" link set pc master br0; ip -n "$p-sw" link set pc up
ip -n "$p-c" addr add 192.168.56.200/24 dev eth0; ip -n "$p-c" link set eth0 up

secret_made=""
for i in 1 2 3; do
    r=$work/r$i
    mkdir -p "$r"; tar -xf "$tarball" -C "$r"
    cp "$deb" "$r/tmp/baton.deb"
    chroot "$r" dpkg -i /tmp/baton.deb >"$work/dpkg$i.log"
    if [ -z "$secret_made" ]; then
        chroot "$r" baton keygen --out /tmp/baton.secret >/dev/null
        cp "$r/tmp/baton.secret" "$work/secret"; secret_made=1
    else
        cp "$work/secret" "$r/tmp/baton.secret"
    fi
    cp "$here/baton.toml.in" "$r/tmp/"
    BATON_PROVISION_ROOT=$r RING0_IF=eth1 RING1_IF=eth2 sh "$here/provision.sh" "$i" 3 192.168.56 192.168.57 192.168.58
    # One machine here: each node pins its maps in its own bpffs dir.
    printf '\n[paths]\nbpffs_dir = "/sys/fs/bpf/%s-n%s"\n' "$p" "$i" >>"$r/etc/baton/baton.toml"
    cp "$(command -v busybox)" "$r/bin/busybox"
    mkdir -p "$r/srv/www"; echo "node$i" >"$r/srv/www/index.html"
    for m in proc sys dev; do mount --rbind "/$m" "$r/$m"; mount --make-rslave "$r/$m"; done
    chroot "$r" baton config check /etc/baton/baton.toml >"$work/check$i.log"
    echo "node$i: $(head -1 "$work/check$i.log")"
done
for i in 1 2 3; do
    setsid nsenter --net="/run/netns/$p-n$i" chroot "$work/r$i" /usr/bin/baton run --config /etc/baton/baton.toml \
        >"$work/agent$i.log" 2>&1 </dev/null &
done
get() { nsenter --net="/run/netns/$p-c" busybox wget -q -O - http://192.168.56.100/ 2>/dev/null || true; }
status() { nsenter --net="/run/netns/$p-n$1" chroot "$work/r$1" baton status 2>&1 || true; }
for k in $(seq 1 300); do [ "$(get)" = node1 ] && break; sleep 0.1; done
if [ "$(get)" != node1 ]; then
    echo "web is not served by node1 within 30 s"; status 2; tail -30 "$work/agent1.log"; exit 1
fi
status 2 | sed -n '2,10p'
echo "client: web served by $(get)"
pids=$(procs_of "$work/r1")
kill -9 $pids
ip -n "$p-n1" link set eth1 down; ip -n "$p-n1" link set eth2 down
t0=$(date +%s%N)
for k in $(seq 1 300); do out=$(get); case "$out" in node2|node3) break ;; esac; sleep 0.05; done
t1=$(date +%s%N)
case "$out" in
    node2|node3) echo "node1 crashed (SIGKILL of its $(echo $pids | wc -w) processes, links down): client served by $out after $(( (t1 - t0) / 1000000 )) ms" ;;
    *) echo "no survivor served web within 15 s of node1's crash"; status 2; tail -30 "$work/agent2.log"; exit 1 ;;
esac
status 2 | sed -n '2,10p'
