# Kill detection on the VM's kernel: three agents in network namespaces on
# veth (XDP attached natively), heartbeats of VM_INTERVAL_MS x VM_MISSES;
# node 3 crashes (SIGKILL of everything in its namespace, so its guard sends
# no distress) and nodes 1 and 2 must report it silent. One line per
# survivor: "RESULT node=N latency_ms=L silence_ms=S" (kill to the agent's
# event; the kernel's last heartbeat from node 3 to the detection).
. "$VM_LIB"
vm_cluster 3
t0=$(vm_now_ns)
vm_start_all
vm_say "agents started in $(vm_ms_since "$t0") ms"
vm_wait_up 90 || { vm_status 1 >&2; vm_die "the peers did not all come up"; }
vm_say "all peers up $(vm_ms_since "$t0") ms after the first start"
for i in 1 2 3; do
    link=$(ip -n node$i -d link show ic0)
    echo "$link" | grep -q "prog/xdp id .* name baton_xdp" || vm_die "node$i: baton_xdp not attached natively: $link"
    echo "XDP node=$i mode=native"
done
sleep 1
vm_crash 3
for i in 1 2; do
    e=$(vm_wait_event $i '.event == "peer_silent" and .node == 3' 30) || vm_die "node$i never reported node 3 silent"
    echo "$e"
    agent_ns=$(echo "$e" | jq .agent_ns)
    kernel_ns=$(echo "$e" | jq .kernel_ns)
    last_ns=$(echo "$e" | jq .last_seen_ns)
    echo "RESULT node=$i latency_ms=$(( (agent_ns - VM_T) / 1000000 )) silence_ms=$(( (kernel_ns - last_ns) / 1000000 ))"
done
st=$(vm_peer_state 1 3)
[ "$st" = silent ] || vm_die "node1 sees node 3 as '$st'"
st=$(vm_peer_state 1 2)
[ "$st" = up ] || vm_die "node1 sees node 2 as '$st'"
vm_stop_all
