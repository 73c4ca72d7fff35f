# Two nodes and a disk (quorum = true, the default): node1's only link is
# cut, so each node sees the other silent. Both keep quorum and race to
# preempt the other's key; the target serializes the two PREEMPT AND ABORTs:
# exactly one wins, keeps (or takes over) `db` and its writes, and the loser
# fences itself, halts and exits (a two-node cluster: no new life). The LU
# holds no write of the loser's from the winner's fencing on.
. "$VM_LIB"
. /host/in/fencing-common.sh

vm_cluster 2
vm_start_all
vm_wait_joined 120 || vm_die "the cluster did not form"$'\n'"$(vm_logs)"
h=$(db_node 1) || vm_die "db is registered nowhere"
vm_wait_for 60 sh -c "grep -q '^ok ' $(vm_dir $h)/writes.log 2>/dev/null" || vm_die "db's writer never wrote on node$h"
echo "CHECK db_before=$h"
echo "CHECK keys_before=$(keys 2)"
sleep 1
vm_cut 1
t_cut=$VM_T
vm_say "node1's link cut"
# One agent goes, the other stays.
gone() { ! vm_alive 1 || ! vm_alive 2; }
vm_wait_for 60 gone || vm_die "both agents still run 60 s after the cut: $(tail -n 20 "$(vm_dir 1)/agent.log") $(tail -n 20 "$(vm_dir 2)/agent.log")"
sleep 3
if vm_alive 1 && ! vm_alive 2; then winner=1; loser=2
elif vm_alive 2 && ! vm_alive 1; then winner=2; loser=1
else vm_die "not exactly one agent left: node1 $(vm_alive 1 && echo alive || echo gone), node2 $(vm_alive 2 && echo alive || echo gone)"
fi
vm_say "winner node$winner, loser node$loser"
fe=$(vm_wait_event $winner ".event == \"fenced\" and .node == $loser" 5) || vm_die "node$winner has no fenced event for node$loser"
echo "$fe"
fenced_ns=$(echo "$fe" | jq .agent_ns)
sf=$(vm_wait_event $loser '.event == "self_fenced"' 5) || vm_die "node$loser did not fence itself: $(tail -n 30 "$(vm_dir $loser)/agent.log")"
echo "$sf"
grep -q "clustering halted" "$(vm_dir $loser)/agent.log" || vm_die "node$loser did not halt"
echo "CHECK keys_after=$(keys $winner)"
# db runs on the winner, which writes after the cut.
vm_wait_for 60 sh -c "awk -v t=$(( (fenced_ns / 10000000) )) '\$1 == \"ok\" && \$3 * 100 > t' $(vm_dir $winner)/writes.log | grep -q ." \
    || vm_die "node$winner's writer did not write after the fencing: $(tail -n 3 "$(vm_dir $winner)/writes.log")"
# The loser's writes: none acknowledged after the winner's fencing (10 ms
# clock resolution), and none of its failed ones on the LU.
late=0
if [ -f "$(vm_dir $loser)/writes.log" ]; then
    late=$(awk -v t="$fenced_ns" '$1 == "ok" && $3 * 1000000000 > t + 20000000' "$(vm_dir $loser)/writes.log" | wc -l)
    for s in $(awk '$1 == "fail" {print $2}' "$(vm_dir $loser)/writes.log" | head -n 20); do
        case "$(block $loser "$s" $winner)" in "BATON node=$loser seq=$s"*) late=$((late + 1)); echo "landed: node$loser seq $s";; esac
    done
fi
echo "RESULT winner=$winner loser=$loser fence_ms=$(( (fenced_ns - t_cut) / 1000000 )) loser_writes_after_fence=$late"
vm_heal 1
vm_stop_all
echo "DONE"
