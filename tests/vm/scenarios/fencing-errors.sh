# Bad disks and a disk that stops answering (docs/fencing.md):
# a. a missing device and b. a device that is not SCSI: `baton run` refuses
#    to start, naming the device and the problem;
# c. the target stops answering (the iSCSI portals' loopback goes down) and
#    the node that runs `db` crashes: the survivors cannot fence it, so the
#    forced leave waits at the fencing level and `db` starts nowhere; `baton
#    status` says "fencing nodeN: waiting (...)"; once an operator confirms
#    the node fenced (`baton fence confirm N`, as after switching it off),
#    the forced leave goes on and `db` starts on a survivor.
. "$VM_LIB"
. /host/in/fencing-common.sh

vm_cluster 3
# refuse CASE DEVICE WANT: node1 with DEVICE as its disk must not start, and
# its error must name DEVICE and say WANT.
refuse() {
    FENCE_DEVICE=$2 vm_write_config 1
    out=$(timeout 60 nsenter --net=/run/netns/node1 baton run --config "$(vm_config 1)" 2>&1); rc=$?
    echo "$out" | tail -n 3
    [ $rc -ne 0 ] && [ $rc -ne 124 ] || vm_die "$1: baton run exited $rc with $2"
    echo "$out" | grep -q "$2" || vm_die "$1: the error does not name $2"
    echo "$out" | grep -qi "$3" || vm_die "$1: the error does not say '$3'"
    echo "CHECK refused=$1"
}
refuse missing /dev/baton/missing "no such device"
refuse not-scsi /dev/null "not a SCSI device"
vm_write_config 1

vm_start_all
vm_wait_joined 120 || vm_die "the cluster did not form"$'\n'"$(vm_logs)"
h=$(db_node 1) || vm_die "db is registered nowhere"
vm_wait_for 60 sh -c "grep -q '^ok ' $(vm_dir $h)/writes.log 2>/dev/null" || vm_die "db's writer never wrote on node$h"
others=$(for i in 1 2 3; do [ $i = $h ] || echo $i; done)
o1=$(echo $others | awk '{print $1}')
# The node crashes and at once the target stops answering (every iSCSI
# session loses its connection), well before the survivors notice the
# crash (the silence bound) and try to fence it.
vm_crash $h
t_crash=$VM_T
ip link set lo down
vm_say "node$h (db's node) crashed; the target's portals are unreachable"
waiting() { baton status --config "$(vm_config $o1)" 2>/dev/null | grep -q "^fencing node$h: waiting"; }
vm_wait_for 60 waiting || vm_die "no 'fencing node$h: waiting' in node$o1's status: $(baton status --config "$(vm_config $o1)" 2>&1 | tail -n 20)"
baton status --config "$(vm_config $o1)" | grep "^fencing"
w=$(vm_wait_event $o1 ".event == \"fencing_waiting\" and .node == $h" 5) || vm_die "no fencing_waiting event"
echo "$w"
echo "CHECK waiting_after_ms=$(vm_ms_since "$t_crash")"
# No takeover while the node is not fenced: db starts nowhere for 10 s.
sleep 10
for i in $others; do
    if vm_events $i | jq -e 'select(.event == "service_up" and .service == "db" and .agent_ns > '"$t_crash"')' > /dev/null; then
        vm_die "db started on node$i while node$h was not fenced"
    fi
done
echo "CHECK unfenced_takeover=0"
# The operator switched the node off: confirm it.
t_conf=$(vm_now_ns)
baton fence confirm $h --config "$(vm_config $o1)" || vm_die "baton fence confirm failed"
up=""
for i in $others; do
    up=$(vm_wait_event $i '.event == "service_up" and .service == "db" and .agent_ns > '"$t_conf" 30) && break
done
[ -n "$up" ] || vm_die "db did not start on a survivor after the confirmation"
echo "$up"
echo "CHECK confirmed_service_ms=$(( ($(echo "$up" | jq .agent_ns) - t_conf) / 1000000 ))"
ip link set lo up
# The agents' blocked SCSI commands end with the sessions (replacement
# timeout); then they stop.
vm_stop_all
echo "DONE"
