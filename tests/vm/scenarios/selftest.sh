# The VM runs Debian 12's kernel, and baton's eBPF programs pass its verifier;
# its in-kernel SipHash-2-4 gives the reference vector (`baton selftest`).
echo "kernel $(uname -r)"
baton selftest --json > "$VM_OUT/selftest.json" || { cat "$VM_OUT/selftest.json"; exit 1; }
cat "$VM_OUT/selftest.json"
