#!/bin/bash
# The .deb under a real systemd (`cargo xtask systemd-test`): three Debian 12
# machines booted with systemd as PID 1 by systemd-nspawn (-b), each in its
# own network namespace, on two bridges (ring0 192.168.56.0/24, ring1
# 192.168.57.0/24) plus a client on ring0. Each is provisioned exactly as
# Vagrant does it: /tmp/baton.deb, /tmp/baton.secret (`baton keygen`, one
# for all) and /tmp/baton.toml.in are uploaded after boot, then
# vagrant/provision.sh runs as root (apt-get install /tmp/baton.deb, the
# config from the template, `systemctl enable --now baton`).
#
# Checked, in this order:
#   1. every unit is active (running) after `systemctl enable --now` (Type=
#      notify: the start job ends on READY=1), with a STATUS= line;
#   2. the journal holds the agent's entries with their structured F_ fields;
#   3. `systemctl reload baton` (SIGHUP): a broken file is refused and the
#      agent keeps running; two groups added on every node are applied
#      without a restart (same MainPID);
#   3b. groups whose application is a systemd unit, run over D-Bus: the
#      unit starts on its preferred node, a unit that fails to start is
#      reported with its job result, and the unit stopped behind baton's back
#      is seen at once (PropertiesChanged) and the group moves;
#   4. WatchdogSec: the agent SIGSTOPped is killed by systemd's watchdog
#      (SIGABRT) and restarted, as docs/operations.md says;
#   5. Restart=on-failure: the agent SIGKILLed is restarted;
#   6. web is served by node1; node1 crashes (its machine SIGKILLed, its
#      links down): the client is served by node2 or node3 (the
#      vagrant-test equivalent);
#   7. `systemctl stop baton` on the node serving web is a graceful leave:
#      exit 0 (inactive, not failed), web moves to the last node.
#
# systemd-nspawn is the one of the Debian 12 root (run from a copy of it, so
# nothing is installed on the host).
#   systemd-test.sh DEB ROOT_TARBALL WORKDIR
set -euo pipefail
deb=$1 tarball=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
p="bsdt$$"
PATH=/usr/sbin:/usr/bin:/sbin:/bin
rm -rf "$work"; mkdir -p "$work"
declare -A nspawn

tools=$work/tools
mkdir -p "$tools"
tar -xf "$tarball" -C "$tools" ./usr/bin/systemd-nspawn ./usr/lib/x86_64-linux-gnu/systemd/
dpkg-deb -x "$deb" "$tools"

leader() { pgrep -P "${nspawn[$1]}" | head -1; }
# A command on node $1, as root in a login-like environment (Vagrant's ssh).
on() {
    local i=$1; shift
    nsenter -t "$(leader "$i")" -a env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb "$@"
}
prop() { on "$1" systemctl show baton -P "$2"; }
fail() {
    echo "FAIL: $*"
    for i in 1 2 3; do
        [ -n "${nspawn[$i]:-}" ] && kill -0 "${nspawn[$i]}" 2>/dev/null || continue
        echo "--- node$i: systemctl status baton"; on "$i" systemctl --no-pager status baton 2>&1 | head -20 || true
        echo "--- node$i: journalctl -u baton (last 30)"; on "$i" journalctl --no-pager -u baton -n 30 2>&1 || true
    done
    exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: until COMMAND succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || fail "$what: not within $secs s"
        sleep 0.2
    done
}

cleanup() {
    set +e
    for i in 1 2 3; do
        [ -n "${nspawn[$i]:-}" ] || continue
        kill -TERM "${nspawn[$i]}" 2>/dev/null
    done
    for i in 1 2 3; do
        [ -n "${nspawn[$i]:-}" ] || continue
        for k in $(seq 1 100); do kill -0 "${nspawn[$i]}" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "${nspawn[$i]}" 2>/dev/null; then
            l=$(leader "$i"); [ -n "$l" ] && kill -9 "$l"; kill -9 "${nspawn[$i]}"
        fi
        rm -rf "/run/systemd/nspawn/propagate/$p-n$i"
    done
    for i in 1 2 3; do ip netns del "$p-n$i" 2>/dev/null; done
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
ip netns add "$p-c"; ip -n "$p-c" link set lo up
ip link add eth0 netns "$p-c" type veth peer name pc netns "$p-sw"
ip -n "$p-sw" link set pc master br0; ip -n "$p-sw" link set pc up
ip -n "$p-c" addr add 192.168.56.200/24 dev eth0; ip -n "$p-c" link set eth0 up

# The one secret, made by the package's own `baton keygen` (Vagrant makes it
# on the host).
"$tools/usr/bin/baton" keygen --out "$work/secret" >/dev/null

# Boot the three machines.
for i in 1 2 3; do
    r=$work/r$i
    mkdir -p "$r"; tar -xf "$tarball" -C "$r"
    echo "node$i" >"$r/etc/hostname"
    # SYSTEMD_SECCOMP=0: no syscall filter of nspawn's (it refuses bpf()),
    # as in a VM.
    SYSTEMD_SECCOMP=0 LD_LIBRARY_PATH=$tools/usr/lib/x86_64-linux-gnu/systemd setsid "$tools/usr/bin/systemd-nspawn" \
        -D "$r" -b --machine="$p-n$i" --register=no --keep-unit --capability=all \
        --network-namespace-path="/run/netns/$p-n$i" >"$work/console$i.log" 2>&1 </dev/null &
    nspawn[$i]=$!
done
for i in 1 2 3; do
    wait_for 60 "node$i's systemd is running" sh -c "[ -n \"\$(pgrep -P ${nspawn[$i]})\" ]"
    wait_for 60 "node$i boots (systemctl is-system-running)" \
        sh -c "nsenter -t \$(pgrep -P ${nspawn[$i]} | head -1) -a systemctl is-system-running | grep -qx running"
    echo "node$i: booted, PID 1 is $(on "$i" cat /proc/1/comm), $(on "$i" systemctl --version | head -1)"
done

# Provision, as Vagrant: upload the files, run the shell provisioner.
for i in 1 2 3; do
    on "$i" sh -c 'cat >/tmp/baton.deb' <"$deb"
    on "$i" sh -c 'umask 077; cat >/tmp/baton.secret' <"$work/secret"
    on "$i" sh -c 'cat >/tmp/baton.toml.in' <"$here/baton.toml.in"
    on "$i" sh -c 'cat >/tmp/vagrant-shell' <"$here/provision.sh"
    t0=$(date +%s%N)
    on "$i" sh /tmp/vagrant-shell "$i" 3 192.168.56 192.168.57 192.168.58 >"$work/provision$i.log" 2>&1 ||
        { cat "$work/provision$i.log"; fail "node$i: provision.sh"; }
    t1=$(date +%s%N)
    # 1. systemctl enable --now returned: the start job ended (READY=1).
    st="$(prop "$i" ActiveState)/$(prop "$i" SubState)"
    [ "$st" = active/running ] || fail "node$i: baton.service is $st after systemctl enable --now"
    [ "$(prop "$i" Type)" = notify ] || fail "node$i: Type is $(prop "$i" Type)"
    [ "$(on "$i" systemctl is-enabled baton)" = enabled ] || fail "node$i: not enabled"
    status=$(prop "$i" StatusText)
    [ -n "$status" ] || fail "node$i: no STATUS= line"
    echo "node$i: provisioned; systemctl enable --now took $(( (t1 - t0) / 1000000 )) ms with apt; active (running), Type=notify, MainPID $(prop "$i" MainPID), status: $status"
done
on 1 systemctl --no-pager status baton | sed -n '1,6p'

wait_for 60 "all three are members (node2's baton status)" sh -c "nsenter -t \$(pgrep -P ${nspawn[2]} | head -1) -a baton status | grep -Eq '^node3 +3 +joined'"

# 2. The journal, with structured fields.
json=$(on 1 journalctl -u baton -o json --no-pager)
n=$(printf '%s\n' "$json" | grep -c '"F_' || true)
[ "$n" -gt 0 ] || fail "no journal entry of baton.service has an F_ field"
fields=$(printf '%s\n' "$json" | grep -o '"F_[A-Z0-9_]*"' | sort -u | tr -d '"' | tr '\n' ' ')
printf '%s\n' "$json" | grep -q '"TARGET"' || fail "no TARGET field in the journal"
echo "journal: node1 has $(printf '%s\n' "$json" | wc -l) baton.service entries, $n with F_ fields: $fields"

# 3. systemctl reload: a broken file, then a group added everywhere.
pid3=$(prop 3 MainPID)
on 3 cp /etc/baton/baton.toml /root/baton.toml.good
on 3 sh -c 'printf "\n[heartbeat\n" >>/etc/baton/baton.toml'
on 3 systemctl reload baton || fail "systemctl reload baton (a broken file) failed as a job"
wait_for 10 "the refusal is in the journal" sh -c "nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a journalctl -u baton --no-pager | grep -q 'reload refused'"
refusal=$(on 3 journalctl -u baton --no-pager -o cat | grep 'reload refused' | tail -1)
[ "$(prop 3 ActiveState)" = active ] && [ "$(prop 3 MainPID)" = "$pid3" ] || fail "node3 did not keep running after a refused reload"
echo "reload: a broken file: the agent keeps running (MainPID $pid3); journal: $refusal"
on 3 cp /root/baton.toml.good /etc/baton/baton.toml
# Two groups whose applications are systemd units (run over D-Bus): unit
# (a web server on 192.168.56.101, preferred node2) and badunit (a unit
# that fails to start, node3 only). Their unit files first, on every node.
demo='[Unit]\nDescription=baton test application (started by baton)\n[Service]\nExecStart=/bin/busybox httpd -f -p 192.168.56.101:80 -h /srv/www\n'
bad='[Unit]\nDescription=baton test application that fails to start\n[Service]\nType=oneshot\nExecStart=/bin/sh -c "echo baton-fail: refusing to start; exit 3"\n'
groups='\n[[group]]\nname = "unit"\naddresses = ["192.168.56.101/24"]\ninterface = "eth1"\nnodes = [1, 2, 3]\npreferred = 2\n\n[group.application]\nkind = "systemd"\nunit = "baton-demo.service"\n\n[[group]]\nname = "badunit"\nnodes = [3]\n\n[group.application]\nkind = "systemd"\nunit = "baton-fail.service"\n'
for i in 1 2 3; do
    on "$i" sh -c "printf '$demo' >/etc/systemd/system/baton-demo.service; printf '$bad' >/etc/systemd/system/baton-fail.service; systemctl daemon-reload"
done
for i in 1 2 3; do
    before=$(prop "$i" MainPID)
    on "$i" sh -c "printf '$groups' >>/etc/baton/baton.toml"
    on "$i" systemctl reload baton || fail "node$i: systemctl reload baton"
    wait_for 10 "node$i: the reload is in the journal" sh -c "nsenter -t \$(pgrep -P ${nspawn[$i]} | head -1) -a journalctl -u baton --no-pager | grep -q 'configuration reloaded'"
    [ "$(prop "$i" MainPID)" = "$before" ] || fail "node$i: the reload restarted the agent"
done
echo "reload: groups unit and badunit added on all three with systemctl reload (same MainPIDs)"

# 3b. systemd units over D-Bus: the start job, a failed start's job result,
# the unit stopped behind baton's back (PropertiesChanged) moves the group.
get101() { nsenter --net="/run/netns/$p-c" busybox wget -q -O - http://192.168.56.101/ 2>/dev/null || true; }
served101() { [ "$(get101)" = "$1" ]; }
wait_for 60 "unit (baton-demo.service) served by node2" served101 node2
[ "$(on 2 systemctl is-active baton-demo)" = active ] || fail "node2: baton-demo.service is not active"
on 2 journalctl -u baton --no-pager -o cat | grep -q "run through systemd's D-Bus API" || fail "node2: units are not run over D-Bus"
echo "dbus: unit runs on node2 (baton-demo.service $(on 2 systemctl is-active baton-demo), started over D-Bus); client on 192.168.56.101 served by $(get101)"
wait_for 30 "node3: badunit's failed start is reported with the job result" sh -c "nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a journalctl -u baton --no-pager -o cat | grep -q 'baton-fail.service failed: job result'"
echo "dbus: node3: $(on 3 journalctl -u baton --no-pager -o cat | grep 'baton-fail.service failed: job result' | head -1)"
t0=$(date +%s%N)
on 2 systemctl stop baton-demo
for k in $(seq 1 600); do out=$(get101); case "$out" in node1|node3) break ;; esac; sleep 0.05; done
t1=$(date +%s%N)
case "$out" in node1|node3) ;; *) fail "unit did not move within 30 s of systemctl stop baton-demo on node2" ;; esac
on 2 journalctl -u baton --no-pager -o cat | grep -q 'systemd unit is inactive (PropertiesChanged)' || fail "node2: the unit's stop was not seen as an event"
echo "dbus: systemctl stop baton-demo on node2 (behind baton's back): seen as PropertiesChanged, unit served by $out after $(( (t1 - t0) / 1000000 )) ms"

# 4. The watchdog: a stopped agent is killed and restarted.
pid3=$(prop 3 MainPID); r0=$(prop 3 NRestarts)
wd=$(prop 3 WatchdogUSec)
t0=$(date +%s%N)
on 3 kill -STOP "$pid3"
wait_for 60 "node3: restarted by the watchdog" sh -c "[ \"\$(nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a systemctl show baton -P NRestarts)\" -gt $r0 ] && nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a systemctl is-active baton"
t1=$(date +%s%N)
on 3 journalctl -u baton --no-pager -o cat | grep -q 'Watchdog timeout' || fail "node3: no 'Watchdog timeout' in the journal"
how=$(on 3 journalctl -u baton --no-pager -o cat | grep -E "Main process exited|Failed with result" | tail -2 | tr '\n' ' ')
echo "watchdog: WatchdogUSec=$wd; SIGSTOP of MainPID $pid3: restarted as MainPID $(prop 3 MainPID) after $(( (t1 - t0) / 1000000 )) ms (NRestarts $r0 -> $(prop 3 NRestarts)); journal: $how"

# 5. Restart=on-failure: SIGKILL.
pid3=$(prop 3 MainPID); r0=$(prop 3 NRestarts)
t0=$(date +%s%N)
on 3 kill -KILL "$pid3"
wait_for 60 "node3: restarted after SIGKILL" sh -c "[ \"\$(nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a systemctl show baton -P NRestarts)\" -gt $r0 ] && nsenter -t \$(pgrep -P ${nspawn[3]} | head -1) -a systemctl is-active baton"
t1=$(date +%s%N)
echo "restart: SIGKILL of MainPID $pid3: restarted as MainPID $(prop 3 MainPID) after $(( (t1 - t0) / 1000000 )) ms (RestartSec=$(prop 3 RestartUSec))"
wait_for 60 "node3 rejoins (node2's baton status)" sh -c "nsenter -t \$(pgrep -P ${nspawn[2]} | head -1) -a baton status | grep -Eq '^node3 +3 +joined'"

# 6. The client, node1's crash.
get() { nsenter --net="/run/netns/$p-c" busybox wget -q -O - http://192.168.56.100/ 2>/dev/null || true; }
served_by() { [ "$(get)" = "$1" ]; }
wait_for 60 "web served by node1" served_by node1
on 2 baton status | sed -n '2,12p'
echo "client: web served by $(get)"
kill -9 "$(leader 1)"
ip -n "$p-n1" link set eth1 down; ip -n "$p-n1" link set eth2 down
t0=$(date +%s%N)
for k in $(seq 1 300); do out=$(get); case "$out" in node2|node3) break ;; esac; sleep 0.05; done
t1=$(date +%s%N)
case "$out" in
    node2|node3) echo "node1 crashed (its machine's PID 1 SIGKILLed, links down): client served by $out after $(( (t1 - t0) / 1000000 )) ms" ;;
    *) fail "no survivor served web within 15 s of node1's crash" ;;
esac
for k in $(seq 1 100); do kill -0 "${nspawn[1]}" 2>/dev/null || break; sleep 0.1; done
unset 'nspawn[1]'

# 7. systemctl stop: a graceful leave.
s=${out#node}; o=$((5 - s))
t0=$(date +%s%N)
on "$s" systemctl stop baton
t1=$(date +%s%N)
st="$(prop "$s" ActiveState)/$(prop "$s" Result)/$(prop "$s" ExecMainStatus)"
[ "$st" = inactive/success/0 ] || fail "node$s: after systemctl stop: $st (want inactive/success/0)"
on "$s" journalctl -u baton --no-pager -o cat | grep -q 'SIGTERM: leaving the cluster gracefully' || fail "node$s: no graceful leave in the journal"
wait_for 30 "web served by node$o after node$s left" served_by "node$o"
echo "systemctl stop on node$s: $(( (t1 - t0) / 1000000 )) ms, inactive, Result=success, exit status 0; journal: $(on "$s" journalctl -u baton --no-pager -o cat | grep -E 'leaving the cluster|left the cluster|agent stopped' | tr '\n' ';')"
echo "client: web served by $(get)"
on "$o" baton status | sed -n '2,12p'
echo "systemd-test: all checks passed"
