# Shared by the fencing scenarios (appended to them by tests/tests/fencing.rs):
# the writer, the `db` group and disk in every node's configuration, keys.
mkdir -p "$VM_BASE"
cat > "$VM_BASE/writer.sh" <<'WRITER'
#!/bin/bash
# writer NODE DEVICE LOG: every 50 ms writes block (NODE*20000 + SEQ) =
# "BATON node=NODE seq=SEQ" with O_DIRECT; logs "ok SEQ T" or "fail SEQ T"
# (T: /proc/uptime when the write ended, CLOCK_BOOTTIME = CLOCK_MONOTONIC in
# the VM, to 10 ms).
n=$1; dev=$2; log=$3
seq=$(tail -n 1 "$log" 2>/dev/null | awk '{print $2}')
seq=${seq:-0}
while :; do
    seq=$((seq + 1))
    if printf 'BATON node=%s seq=%s\n' "$n" "$seq" | dd of="$dev" bs=512 seek=$((n * 20000 + seq)) count=1 conv=sync,notrunc oflag=direct status=none 2>/dev/null; then
        r=ok
    else
        r=fail
    fi
    echo "$r $seq $(cut -d' ' -f1 /proc/uptime)" >> "$log"
    sleep 0.05
done
WRITER
chmod +x "$VM_BASE/writer.sh"

# A disk and the group `db` (its writer) for node N. FENCE_PREFERRED (1)
# is db's preferred node.
vm_extra_config() {
    cat <<CONF
[[disk]]
name = "lu"
device = "${FENCE_DEVICE:-$(vm_disk $1)}"
check_interval_ms = 500
timeout_ms = 3000

[[group]]
name = "db"
preferred = ${FENCE_PREFERRED:-1}
nodes = [$(seq -s ', ' 1 "$VM_N")]
transfer_cost = "costly"

[group.application]
kind = "command"
daemon = "exec $VM_BASE/writer.sh $1 $(vm_disk $1) $(vm_dir $1)/writes.log"
CONF
}

key() { printf '0x%x%08x' "$VM_CLUSTER_ID" "$1"; }
region() { echo $(( $1 * 20000 )); }
# The registered keys, comma-separated, as sg_persist (an independent reader) sees them.
keys() { sg_persist -n --in --read-keys "$(vm_disk "$1")" | awk '/^ *0x/ {print $1}' | sort | tr '\n' ','; }
# The block of node N's writer with sequence number S, as on the LU now.
block() { dd if="$(vm_disk "$3")" bs=512 skip=$(( $(region "$1") + $2 )) count=1 iflag=direct status=none | tr -d '\0' | head -c 40; }
# The node `db` is registered on, as node N (1) sees it; waits up to 60 s.
db_node() {
    _end=$(( $(vm_now_ns) + 60000000000 ))
    while :; do
        _n=$(vm_status "${1:-1}" 2>/dev/null | jq -r '.services[] | select(.name == "db" and .state == "Registered") | .node')
        if [ -n "$_n" ] && [ "$_n" != null ]; then echo "$_n"; return 0; fi
        [ "$(vm_now_ns)" -lt "$_end" ] || return 1
        sleep 0.2
    done
}
