# SCSI-3 persistent reservations through the LIO target, with sg_persist as
# the harness's self-check: every node's disk is its own I_T nexus to the one
# LU. REGISTER from every node, RESERVE type 5 (Write Exclusive, Registrants
# Only) from node 1, READ KEYS, PREEMPT AND ABORT of node 1 from node 2; then
# node 1 gets UNIT ATTENTION (registrations preempted) and RESERVATION
# CONFLICT on a write, and node 2 holds the reservation.
. "$VM_LIB"
key() { printf '0xba70%02d' "$1"; }
# step DESCRIPTION COMMAND...: runs it, shows its output, fails unless it succeeds.
step() {
    _d=$1; shift
    echo "--- $_d: $*"
    out=$("$@" 2>&1); rc=$?
    echo "$out"
    [ $rc -eq 0 ] || vm_die "$_d: exit status $rc"
}
expect() { echo "$out" | grep -q -- "$1" || vm_die "expected '$1' in: $out"; }

for i in $(seq 1 "$VM_NODES"); do
    step "REGISTER node$i" sg_persist -n --out --register --param-sark="$(key $i)" "$(vm_disk $i)"
done
step "RESERVE type 5 from node1" sg_persist -n --out --reserve --param-rk="$(key 1)" --prout-type=5 "$(vm_disk 1)"
step "READ KEYS from node$VM_NODES" sg_persist -n --in --read-keys "$(vm_disk "$VM_NODES")"
expect "$VM_NODES registered reservation keys follow"
for i in $(seq 1 "$VM_NODES"); do expect "$(key $i)"; done
step "READ RESERVATION" sg_persist -n --in --read-reservation "$(vm_disk 2)"
expect "Key=$(key 1)"
expect "Write Exclusive, registrants only"
step "a registrant (node2) writes" dd if=/dev/zero of="$(vm_disk 2)" bs=4096 count=1 oflag=direct

step "PREEMPT AND ABORT of node1 from node2" sg_persist -n --out --preempt-abort --param-rk="$(key 2)" --param-sark="$(key 1)" --prout-type=5 "$(vm_disk 2)"
echo "--- node1: TEST UNIT READY"
out=$(sg_turs -v "$(vm_disk 1)" 2>&1); rc=$?
echo "$out"
[ $rc -eq 6 ] || vm_die "node1's first command after the preempt: exit status $rc, expected 6 (UNIT ATTENTION)"
expect "Registrations preempted"
echo "UNIT_ATTENTION node=1 asc=2a/05"
echo "--- node1 writes (dd oflag=direct)"
out=$(dd if=/dev/zero of="$(vm_disk 1)" bs=4096 count=1 oflag=direct 2>&1); rc=$?
echo "$out"
[ $rc -ne 0 ] || vm_die "node1's write succeeded after it was preempted"
dmesg | tail -n 20 | grep -q "reservation conflict" || vm_die "no reservation conflict in the kernel log: $(dmesg | tail -n 20)"
echo "--- node1 writes (WRITE(10) through sg_raw)"
out=$(sg_raw -s 512 -i /dev/zero "$(vm_disk 1)" 2a 00 00 00 00 00 00 00 01 00 2>&1)
echo "$out"
expect "Reservation Conflict"
echo "RESERVATION_CONFLICT node=1"
step "READ RESERVATION" sg_persist -n --in --read-reservation "$(vm_disk 3)"
expect "Key=$(key 2)"
expect "Write Exclusive, registrants only"
step "READ KEYS" sg_persist -n --in --read-keys "$(vm_disk 3)"
expect "$((VM_NODES - 1)) registered reservation keys follow"
echo "$out" | grep -q -- "$(key 1)" && vm_die "node1's key is still registered"
step "the holder (node2) writes" dd if=/dev/zero of="$(vm_disk 2)" bs=4096 count=1 oflag=direct
echo "HOLDER node=2"
