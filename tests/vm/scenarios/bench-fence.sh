# `cargo xtask bench fence` (xtask/src/bench_fence.rs): baton's fencing on a
# crash of the node running `db`, then Debian's fence_scsi doing the same
# preempt on the same LU. Three agents, the writer, the `db` group and a
# [[disk]] per node come from fencing-common.sh (at /host/in).
#
# Part 1, BENCH_KILLS times: crash the node holding `db` (vm_crash: every
# process of its namespace, guard included; nothing sends a distress) and
# print one line
#   KILL i=.. victim=.. fencer=.. fence_ms=.. ... writes_after_fence=..
# with baton's own fence time (the `ms` of the survivors' `fenced` events:
# the fencing level's notification to the preempt's acknowledgement; the
# survivor that did the preempt, by_this_node), the kill to `db`'s
# service_up on a survivor (agent_ns, CLOCK_MONOTONIC) and to that
# survivor's writer's first successful write (writes.log, /proc/uptime, 10 ms
# resolution), whether the dead node's key is gone (sg_persist), and the
# blocks of the dead node's writer that appeared on the LU between the end of
# its processes and the check after the takeover. A kill that goes wrong
# prints FAILKILL i=.. cause=... (its logs go to $VM_OUT/fail-I.txt). Then the
# node is started again, rejoins and registers its key again; `db` stays
# where it moved.
#
# Part 2, after every agent stopped: fence_scsi (fence-agents, Python, with
# the interpreter and modules unpacked from /host/in/fence-scsi.tar.gz into
# the VM's memory) registers node1 (`-o on`), then BENCH_SCSI_RUNS times: the
# victim's key (node2 or node3) is registered on its own disk with
# sg_persist, and `fence_scsi -o off -d <node1's disk> -k <victim's key>` is
# timed from its start to its exit (bash's EPOCHREALTIME); one line
#   SCSI i=.. victim=.. ms=.. rc=.. key_gone=..
. "$VM_LIB"
. /host/in/fencing-common.sh

KILLS=${BENCH_KILLS:-20}
SCSI_RUNS=${BENCH_SCSI_RUNS:-$KILLS}

vm_say "heartbeats ${VM_INTERVAL_MS} ms x ${VM_MISSES}; $KILLS kills, $SCSI_RUNS fence_scsi runs"
vm_cluster 3
vm_start_all
vm_wait_joined 180 || vm_die "the cluster did not form"
vm_wait_for 30 sh -c "[ \$(sg_persist -n --in --read-keys $(vm_disk 1) | grep -c '^ *0x') = 3 ]" || vm_die "not 3 keys after the join: $(keys 1)"
vm_say "joined; keys $(keys 1)"

# The first `ok` of node N's writes.log written after CLOCK_MONOTONIC ns T:
# milliseconds since T (empty when there is none).
first_write_ms() {
    awk -v t="$2" '$1 == "ok" && $3 * 1000000000 > t { printf "%d\n", ($3 * 1000000000 - t) / 1000000; exit }' "$(vm_dir $1)/writes.log" 2>/dev/null
}
has_write_after() { [ -n "$(first_write_ms "$1" "$2")" ]; }
# Blocks of node N's writer with sequence numbers S+1 .. S+40 on the LU
# (read through node R's session).
landed() {
    dd if="$(vm_disk "$3")" bs=512 skip=$(( $(region "$1") + $2 + 1 )) count=40 iflag=direct status=none \
        | tr '\0' '\n' | grep -c "^BATON node=$1 seq="
}
# The first event (jq FILTER) of any of NODES: prints it; 1 after TIMEOUT s.
wait_any_event() {
    _flt=$1; _to=$2; shift 2
    _end=$(( $(vm_now_ns) + _to * 1000000000 ))
    while :; do
        for _n in "$@"; do
            _e=$(jq -c "select($_flt)" "$(vm_dir $_n)/state/events.jsonl" 2>/dev/null | head -n 1)
            if [ -n "$_e" ]; then echo "$_e"; return 0; fi
        done
        [ "$(vm_now_ns)" -lt "$_end" ] || return 1
        sleep "${WAIT_POLL:-0.2}"
    done
}
# Keeps the logs of a kill that went wrong and says why on stdout.
fail_kill() {
    echo "FAILKILL i=$1 victim=$2 cause=$(echo "$3" | tr ' =' '_:')"
    {
        echo "kill $1 of node$2: $3"
        for _n in 1 2 3; do
            echo "--- node$_n: events"; vm_events $_n | tail -n 30
            echo "--- node$_n: agent.log"; tail -n 60 "$(vm_dir $_n)/agent.log" 2>/dev/null
            echo "--- node$_n: writes.log"; tail -n 5 "$(vm_dir $_n)/writes.log" 2>/dev/null
        done
        echo "--- keys: $(keys 1)"
    } > "$VM_OUT/fail-$1.txt" 2>&1
}
# Starts node H again as a rebooted host would (its iSCSI session outlives
# the "crash", so the agent's disk check at start meets the pending UNIT
# ATTENTION 2A/05, registrations preempted, and goes on); the dead agent's
# control socket is removed (/run is empty after a reboot; vm_start waits
# for the socket).
# vm_start's steps, but a start that fails returns 1 (vm_start ends the
# scenario) and leaves the agent's last line in $START_ERROR.
restart() {
    _d=$(vm_dir "$1")
    rm -f "$_d/run/$VM_CLUSTER_NAME.sock"
    nsenter --net=/run/netns/node$1 baton run --config "$_d/baton.toml" >> "$_d/agent.log" 2>&1 &
    echo $! > "$_d/pid"
    _end=$(( $(vm_now_ns) + VM_START_TIMEOUT * 1000000000 ))
    while [ ! -S "$_d/run/$VM_CLUSTER_NAME.sock" ]; do
        if ! kill -0 "$(vm_pid "$1")" 2>/dev/null || [ "$(vm_now_ns)" -ge "$_end" ]; then
            START_ERROR="the agent of node$1 did not start: $(tail -n 1 "$_d/agent.log")"
            kill -KILL "$(vm_pid "$1")" 2>/dev/null
            wait "$(vm_pid "$1")" 2>/dev/null
            rm -f "$_d/pid"
            return 1
        fi
        sleep 0.1
    done
}
# Brings node H back: started if it is not, the cluster joined, its key
# registered again, `db` registered on a writing node. 1 when it does not.
recover() {
    vm_alive "$1" || restart "$1"
    vm_wait_joined 180 || return 1
    vm_wait_for 30 sh -c "sg_persist -n --in --read-keys $(vm_disk 1) | grep -q $(key "$1")" || return 1
    db_node "$1" > /dev/null || return 1
}

# ------------------------------------------------------------ part 1: baton
stopped=""
crashes=0
i=1
while [ $i -le "$KILLS" ]; do
    if [ -n "$stopped" ]; then
        echo "FAILKILL i=$i victim=0 cause=not_run:_$stopped"
        i=$((i + 1))
        continue
    fi
    live=$(vm_running | head -n 1)
    h=$(db_node "$live") || { fail_kill $i 0 "db is registered nowhere before the kill"; stopped="db_registered_nowhere"; i=$((i + 1)); continue; }
    vm_wait_for 30 sh -c "grep -q '^ok ' $(vm_dir $h)/writes.log 2>/dev/null" || { fail_kill $i "$h" "db's writer never wrote on node$h before the kill"; stopped="no_writer"; i=$((i + 1)); continue; }
    others=$(for n in 1 2 3; do [ $n = "$h" ] || echo $n; done | tr '\n' ' ')
    o1=${others%% *}
    # A random phase against the heartbeats.
    sleep "0.$((RANDOM % 10))"
    last_ok=$(grep '^ok ' "$(vm_dir $h)/writes.log" | tail -n 1 | awk '{print $2}')
    vm_crash "$h"
    t_kill=$VM_T
    crashes=$((crashes + 1))
    # Every process of the node is gone (a dd in flight has finished): what
    # is on the LU now was written before the fencing.
    vm_wait_for 10 sh -c "[ -z \"\$(ip netns pids node$h)\" ]" || { fail_kill $i "$h" "processes of node$h still alive 10 s after SIGKILL"; stopped="unkillable"; i=$((i + 1)); continue; }
    last_logged=$(tail -n 1 "$(vm_dir $h)/writes.log" | awk '{print $2}')
    pre=$(landed "$h" "$last_ok" "$o1")

    up=$(WAIT_POLL=0.5 wait_any_event ".event == \"service_up\" and .service == \"db\" and .agent_ns > $t_kill" 90 $others)
    if [ -z "$up" ]; then
        f=$(for n in $others; do vm_events $n | jq -c "select(.agent_ns > $t_kill and (.event | test(\"fenc|alert\")))"; done | tr '\n' ' ')
        fail_kill $i "$h" "db did not start on a survivor within 90 s; fencing events: ${f:-none}"
        recover "$h" || stopped="cluster_did_not_recover_after_kill_$i"
        i=$((i + 1))
        continue
    fi
    u=$(echo "$up" | jq -r .node)
    up_ns=$(echo "$up" | jq -r .agent_ns)
    # Both survivors' fenced events of this kill.
    fe=""
    for n in $others; do
        e=$(vm_wait_event $n ".event == \"fenced\" and .node == $h and .agent_ns > $t_kill" 10) && fe="$fe$n $(echo "$e" | jq -r '"\(.ms) \(.by_this_node) \(.agent_ns)"')
"
    done
    if [ -z "$fe" ]; then
        fail_kill $i "$h" "db started on node$u but no survivor logged a fenced event for node$h"
        recover "$h" || stopped="cluster_did_not_recover_after_kill_$i"
        i=$((i + 1))
        continue
    fi
    # The survivor that did the preempt (by_this_node), fastest first.
    best=$(echo "$fe" | awk '$3 == "true" && (m == "" || $2 + 0 < m + 0) { m = $2; l = $0 } END { print l }')
    own=1
    [ -n "$best" ] || { best=$(echo "$fe" | awk 'NF && (m == "" || $2 + 0 < m + 0) { m = $2; l = $0 } END { print l }'); own=0; }
    fencer=$(echo "$best" | awk '{print $1}')
    fence_ms=$(echo "$best" | awk '{print $2}')
    n_own=$(echo "$fe" | awk '$3 == "true"' | wc -l)
    fenced_ns=$(echo "$fe" | awk 'NF {print $4}' | sort -n | head -n 1)
    fenced_on_u=$(echo "$fe" | awk -v u="$u" '$1 == u {print $4}')
    before=0
    [ -n "$fenced_on_u" ] && [ "$fenced_on_u" -lt "$up_ns" ] && before=1
    # The survivor's writer.
    vm_wait_for 30 has_write_after "$u" "$t_kill" \
        || { fail_kill $i "$h" "db's writer on node$u did not write within 30 s of service_up"; recover "$h" || stopped="cluster_did_not_recover_after_kill_$i"; i=$((i + 1)); continue; }
    write_ms=$(first_write_ms "$u" "$t_kill")
    k=$(keys "$o1")
    gone=1
    case "$k" in *"$(key $h)"*) gone=0 ;; esac
    post=$(landed "$h" "$last_ok" "$o1")
    echo "KILL i=$i victim=$h fencer=$fencer fence_ms=$fence_ms by_this_node=$own preempts=$n_own service_on=$u" \
        "kill_to_fenced_ms=$(( (fenced_ns - t_kill) / 1000000 )) kill_to_service_ms=$(( (up_ns - t_kill) / 1000000 ))" \
        "kill_to_write_ms=$write_ms fenced_before_service=$before key_gone=$gone writes_after_fence=$((post - pre))" \
        "last_ok=$last_ok last_logged=$last_logged landed_before_fence=$pre keys=$k"
    [ "$before" = 1 ] || fail_kill $i "$h" "db started on node$u before node$u logged node$h fenced"
    [ "$gone" = 1 ] || fail_kill $i "$h" "node$h's key $(key $h) still registered after its fencing: $k"
    [ $((post - pre)) = 0 ] || fail_kill $i "$h" "$((post - pre)) block(s) of node$h landed after its fencing"
    # Back: the node rejoins and registers its key again.
    if ! restart "$h"; then
        fail_kill $i "$h" "$START_ERROR"
        recover "$h" || stopped="node${h}_did_not_restart_after_kill_$i"
    elif ! vm_wait_joined 180; then
        fail_kill $i "$h" "node$h did not rejoin within 180 s"
        stopped="node${h}_did_not_rejoin_after_kill_$i"
    elif ! vm_wait_for 30 sh -c "sg_persist -n --in --read-keys $(vm_disk 1) | grep -q $(key $h)"; then
        fail_kill $i "$h" "node$h's key was not registered again after its rejoin"
        stopped="key_not_registered_after_kill_$i"
    fi
    # Every agent runs (none was fenced or halted on the way).
    for n in 1 2 3; do
        vm_alive $n && continue
        fail_kill $i "$n" "node$n's agent is not running after kill $i: $(grep -E 'halted|ERROR|error' "$(vm_dir $n)/agent.log" | tail -n 1)"
        recover "$n" || stopped="node${n}_did_not_recover_after_kill_$i"
    done
    i=$((i + 1))
done
# Silences: each crash makes its two survivors see one; any other is a
# false detection (the heartbeat setting is too tight for this VM).
sil=0
for n in 1 2 3; do
    sil=$((sil + $(vm_events $n | jq -c 'select(.event == "peer_silent")' | wc -l)))
done
echo "SILENCES total=$sil expected=$((2 * crashes))"
vm_stop_all
vm_say "agents stopped; keys left: $(keys 1)"

# ------------------------------------------------------------ part 2: fence_scsi
tar -xzf /host/in/fence-scsi.tar.gz -C / || vm_die "cannot unpack fence-scsi.tar.gz"
# The libraries the image lacks (the ones it has are the same host files).
for f in /opt/baton-fence-libs/*; do
    [ -e "/lib/x86_64-linux-gnu/${f##*/}" ] || mv "$f" /lib/x86_64-linux-gnu/
done
mkdir -p /var/run
echo "SCSIINFO python=$(python3 -c 'import sys; print(sys.version.split()[0])' 2>&1 | tr ' ' _) fence_scsi=$(fence_scsi -V 2>&1 | head -n 1 | tr ' ' _)"
python3 -c 'import pycurl, pexpect, ctypes, hashlib, uuid' || vm_die "fence_scsi's modules do not import in the VM"
# Where fence_scsi's time goes: the interpreter's start, fencing.py's
# imports, one sg_persist.
ms_of() { _a=$EPOCHREALTIME; "$@" > /dev/null 2>&1; _b=$EPOCHREALTIME; echo $(( (${_b/./} - ${_a/./}) / 1000 )); }
echo "SCSIINFO python_start_ms=$(ms_of python3 -c pass) import_fencing_ms=$(ms_of python3 -c 'import sys; sys.path.append("/usr/share/fence"); import fencing') sg_persist_ms=$(ms_of sg_persist -n -i -k "$(vm_disk 1)") sg_turs_ms=$(ms_of sg_turs "$(vm_disk 1)")"
hex() { key "$1" | sed 's/^0x//'; }
d1=$(vm_disk 1)
# A clean LU: no registration, no reservation.
sg_turs "$d1" > /dev/null 2>&1
sg_persist -n --out --register-ignore --param-sark="$(key 1)" "$d1" > /dev/null 2>&1
sg_persist -n --out --clear --param-rk="$(key 1)" "$d1" > /dev/null 2>&1
echo "SCSICHECK keys_before_on=$(keys 1)"
# The fencing node's own registration (and the reservation), as Pacemaker's unfencing does.
fence_scsi -o on -d "$d1" -k "$(hex 1)" > /tmp/fence-on.txt 2>&1 || { cat /tmp/fence-on.txt; vm_die "fence_scsi -o on failed"; }
echo "SCSICHECK on=$(tr '\n ' '__' < /tmp/fence-on.txt) keys=$(keys 1) host_key=$(cat /var/run/cluster.key)"
i=1
while [ $i -le "$SCSI_RUNS" ]; do
    v=$((2 + i % 2))
    dv=$(vm_disk $v)
    sg_turs "$dv" > /dev/null 2>&1
    sg_persist -n --out --register-ignore --param-sark="$(key $v)" "$dv" > /dev/null 2>&1 \
        || { sg_turs "$dv" > /dev/null 2>&1; sg_persist -n --out --register-ignore --param-sark="$(key $v)" "$dv" > /dev/null 2>&1; }
    case "$(keys 1)" in *"$(key $v)"*) ;; *) echo "SCSI i=$i victim=$v ms=0 rc=-1 key_gone=0 error=victim_key_not_registered"; i=$((i + 1)); continue ;; esac
    t0=$EPOCHREALTIME
    fence_scsi -o off -d "$d1" -k "$(hex $v)" > /tmp/fence-off.txt 2>&1
    rc=$?
    t1=$EPOCHREALTIME
    us=$(( ${t1/./} - ${t0/./} ))
    gone=1
    case "$(keys 1)" in *"$(key $v)"*) gone=0 ;; esac
    echo "SCSI i=$i victim=$v ms=$((us / 1000)).$(printf '%03d' $((us % 1000))) rc=$rc key_gone=$gone out=$(tr '\n ' '__' < /tmp/fence-off.txt)"
    i=$((i + 1))
done
echo "SCSICHECK keys_after=$(keys 1) reservation=$(sg_persist -n --in --read-reservation "$d1" | awk '/Key=/ {sub(/.*Key=/, ""); print $1}')"
echo "DONE"
