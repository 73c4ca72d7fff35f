# Fencing with SCSI-3 persistent reservations on a real LIO target, three
# agents (docs/fencing.md). Each node reaches the one LU through its own
# iSCSI session (/dev/baton/nodeN). A group `db` runs a writer that appends
# sequence-numbered 512-byte blocks with O_DIRECT to its node's region of
# the LU, logging each write's result.
#
# 1. join: three keys registered and one reservation (sg_persist reads them);
# 2. a hung node (SIGSTOP of its agent and of its writer) is preempted before
#    `db` starts on a survivor; after SIGCONT its next write fails (RESERVATION
#    CONFLICT), its agent halts, and the LU holds no block it wrote after;
# 3. a graceful leave unregisters, a rejoin registers the key again;
# 4. a crashed node is fenced, and started again it rejoins and registers
#    (its start meets the unit attention of its preempted key).
# Lines "RESULT ..." and "CHECK ..." are read by tests/tests/fencing.rs,
# which also hands over fencing-common.sh (the writer, the group and disk,
# key helpers) as /host/in/fencing-common.sh.
. "$VM_LIB"
. /host/in/fencing-common.sh

vm_cluster 3
vm_start_all
vm_wait_joined 120 || vm_die "the cluster did not form"$'\n'"$(vm_logs)"
vm_say "joined"

# --- 1. join: three keys, one reservation
vm_wait_for 10 sh -c "[ \$(sg_persist -n --in --read-keys $(vm_disk 3) | grep -c '^ *0x') = 3 ]" || vm_die "not 3 keys: $(keys 3)"
k=$(keys 3)
echo "CHECK keys=$k"
for i in 1 2 3; do echo "$k" | grep -q "$(key $i)" || vm_die "node$i's key $(key $i) is not registered: $k"; done
r=$(sg_persist -n --in --read-reservation "$(vm_disk 2)")
echo "$r"
echo "$r" | grep -q "Write Exclusive, registrants only" || vm_die "no type 5 reservation: $r"
holder=$(echo "$r" | awk '/Key=/ {sub(/.*Key=/, ""); print $1}')
echo "CHECK reservation=wero holder=$holder"
baton storage status --config "$(vm_config 1)" || vm_die "baton storage status failed"
baton storage status --json --config "$(vm_config 1)" > "$VM_OUT/storage-status.json"

# --- 2. a hung node is fenced before its service moves
h=$(db_node 1) || vm_die "db is registered nowhere"
vm_wait_for 60 sh -c "grep -q '^ok ' $(vm_dir $h)/writes.log 2>/dev/null" || vm_die "db's writer never wrote on node$h"
others=$(for i in 1 2 3; do [ $i = $h ] || echo $i; done)
o1=$(echo $others | awk '{print $1}')
sleep 1
writer=""
for p in $(ip netns pids node$h); do
    grep -q "writer.sh" "/proc/$p/cmdline" 2>/dev/null && writer="$writer $p"
done
[ -n "$writer" ] || vm_die "no writer process on node$h"
agent=$(vm_pid $h)
pg=$(echo $writer | awk '{print $1}')
t_stop=$(vm_now_ns)
# The agent, and the writer's whole process group (the daemon is the
# leader of its own group: its dd too).
kill -STOP "$agent"
kill -STOP -- -"$pg"
last_ok=$(grep '^ok ' "$(vm_dir $h)/writes.log" | tail -n 1 | awk '{print $2}')
vm_say "node$h hung (agent $agent, writer group $pg) after writing seq $last_ok"
f=""
for i in $others; do
    e=$(vm_wait_event $i ".event == \"fenced\" and .node == $h" 60) && { f="$f $i"; echo "$e"; }
done
[ -n "$f" ] || vm_die "no survivor fenced node$h"
up=""
for i in $others; do
    up=$(vm_wait_event $i '.event == "service_up" and .service == "db"' 30) && break
done
[ -n "$up" ] || vm_die "db did not start on a survivor"
echo "$up"
up_node=$(echo "$up" | jq -r .node)
up_ns=$(echo "$up" | jq .agent_ns)
fenced_ns=$(for i in $others; do vm_events $i | jq -c "select(.event == \"fenced\" and .node == $h) | .agent_ns"; done | sort -n | head -n 1)
fenced_on_up=$(vm_events "$up_node" | jq -c "select(.event == \"fenced\" and .node == $h) | .agent_ns" | head -n 1)
k=$(keys $o1)
echo "CHECK keys_after_fence=$k hung=$h"
echo "$k" | grep -q "$(key $h)" && vm_die "node$h's key is still registered after its fencing: $k"
echo "RESULT hung_fence_ms=$(( (fenced_ns - t_stop) / 1000000 )) hung_service_ms=$(( (up_ns - t_stop) / 1000000 )) fenced_before_service=$([ "$fenced_on_up" -lt "$up_ns" ] && echo 1 || echo 0) service_on=$up_node"
# The survivor's writer writes.
vm_wait_for 30 sh -c "grep -q '^ok ' $(vm_dir "$up_node")/writes.log 2>/dev/null" || vm_die "db's writer on node$up_node never wrote: $(tail -n 3 "$(vm_dir "$up_node")/writes.log")"
# Wake node$h's writer: its next write must fail (RESERVATION CONFLICT).
kill -CONT -- -"$pg"
vm_wait_for 30 sh -c "grep -q '^fail ' $(vm_dir $h)/writes.log" || vm_die "node$h's writer never failed after the fencing: $(tail -n 5 "$(vm_dir $h)/writes.log")"
first_fail=$(grep '^fail ' "$(vm_dir $h)/writes.log" | head -n 1 | awk '{print $2}')
sleep 0.5
oks_after=$(awk -v s="$first_fail" '$1 == "ok" && $2 >= s' "$(vm_dir $h)/writes.log" | wc -l)
echo "CHECK hung_last_ok_at_stop=$last_ok hung_first_fail=$first_fail hung_ok_after_fail=$oks_after"
dmesg | grep -qi "reservation conflict" || vm_die "no reservation conflict in the kernel log"
# Wake the hung node's agent: it must halt.
kill -CONT "$agent"
vm_wait_for 30 sh -c "grep -q 'clustering halted' $(vm_dir $h)/agent.log" || vm_die "node$h's agent did not halt: $(tail -n 20 "$(vm_dir $h)/agent.log")"
why=$(grep 'clustering halted' "$(vm_dir $h)/agent.log" | head -n 1 | sed 's/.*why=//' | tr -d ' ')
echo "CHECK hung_halt=$why"
# The LU holds no block of the hung node from its first failed write on.
landed=0
s=$first_fail
while [ $s -le $((first_fail + 40)) ]; do
    b=$(block $h $s $o1)
    case "$b" in "BATON node=$h seq=$s"*) landed=$((landed + 1)); echo "landed: $b";; esac
    s=$((s + 1))
done
echo "RESULT writes_after_fence=$((landed + oks_after))"
# And the hung node's earlier blocks are there (the check reads the right place).
b=$(block $h $last_ok $o1)
case "$b" in "BATON node=$h seq=$last_ok"*) ;; *) vm_die "node$h's last acknowledged block $last_ok is not on the LU: '$b'";; esac

# --- 3. graceful leave unregisters; a rejoin registers again
vm_wait_joined 120 || vm_die "the cluster did not settle after node$h's halt"$'\n'"$(vm_logs)"
vm_stop 3 || vm_die "node3's agent exited with an error on SIGTERM"
k=$(keys $o1)
echo "CHECK keys_after_leave=$k"
echo "$k" | grep -q "$(key 3)" && vm_die "node3's key is still registered after its graceful leave: $k"
vm_start 3
vm_wait_joined 120 || vm_die "node3 did not rejoin"$'\n'"$(vm_logs)"
vm_wait_for 10 sh -c "sg_persist -n --in --read-keys $(vm_disk 1) | grep -q $(key 3)" || vm_die "node3's key was not registered again: $(keys 1)"
echo "CHECK keys_after_rejoin=$(keys 1)"

# --- 4. a crashed node (everything of it SIGKILLed, its iSCSI session still
# logged in) is fenced, and starts again: its disk check at start meets the
# unit attention of its preempted key (2A/05) and goes on; it registers again
c=$(db_node 1) || vm_die "db is registered nowhere"
vm_crash "$c"
sv=$(for i in 1 2 3; do [ $i = $c ] || echo $i; done | head -n 1)
vm_wait_event "$sv" ".event == \"fenced\" and .node == $c and .agent_ns > $VM_T" 60 > /dev/null || vm_die "node$c was not fenced after its crash"
vm_start "$c"
vm_wait_joined 120 || vm_die "node$c did not rejoin after its crash: $(tail -n 5 "$(vm_dir "$c")/agent.log")"
vm_wait_for 10 sh -c "sg_persist -n --in --read-keys $(vm_disk $sv) | grep -q $(key $c)" || vm_die "node$c's key was not registered again: $(keys $sv)"
echo "CHECK crashed=$c keys_after_crash_restart=$(keys $sv)"
vm_stop_all
echo "DONE"
