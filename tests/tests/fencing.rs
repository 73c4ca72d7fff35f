//! Fencing with SCSI-3 persistent reservations, for real: baton agents in a
//! qemu VM on Debian 12's own kernel, each reaching one LU of an LIO iSCSI
//! target through its own session (docs/vm.md, docs/fencing.md). The
//! scenarios are shell scripts in tests/vm/scenarios; they print `CHECK` and
//! `RESULT` lines that the tests assert on, and `sg_persist` (sg3-utils) is
//! the independent reader of the disk's keys and reservation.
//!
//! Under CI=true they must run (a skip is a failure).

use std::time::{Duration, Instant};

use baton_tests::vm::{vm_tests_possible, Vm, VmOutput};

const FENCING: &str = include_str!("../vm/scenarios/fencing.sh");
const TWO_NODE: &str = include_str!("../vm/scenarios/fencing-two-node.sh");
const ERRORS: &str = include_str!("../vm/scenarios/fencing-errors.sh");
const COMMON: &str = include_str!("../vm/scenarios/fencing-common.sh");

/// The value of `key` in the first stdout line that starts with `tag` and
/// has it (`KEY=VALUE` words; lists are comma-separated).
fn value(out: &VmOutput, tag: &str, key: &str) -> String {
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix(tag))
        .flat_map(|l| l.split_whitespace())
        .find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
        .unwrap_or_else(|| panic!("no {tag}{key}= in the scenario's output\n{}", out.report()))
}

fn run(name: &str, nodes: usize, scenario: &str) -> VmOutput {
    let t = Instant::now();
    let out = Vm::builder()
        .name(name)
        .nodes(nodes)
        .lun_mib(64)
        .file("fencing-common.sh", COMMON)
        .scenario(scenario)
        .timeout(Duration::from_secs(420))
        .run();
    eprintln!(
        "{name}: {} under {}: VM {:.1} s, test {:.1} s",
        out.kernel_release,
        out.accel.name(),
        out.total.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    out.assert_success();
    out
}

const K1: &str = "0x109200000001";
const K2: &str = "0x109200000002";
const K3: &str = "0x109200000003";

#[test]
fn join_registers_and_reserves_a_hung_node_is_fenced_before_takeover_and_a_leave_unregisters() {
    if !vm_tests_possible() {
        return;
    }
    let out = run("fencing", 3, FENCING);
    // 1. Join: three keys (read by sg_persist) and one type-5 reservation.
    let keys = value(&out, "CHECK ", "keys");
    for k in [K1, K2, K3] {
        assert!(keys.contains(k), "{k} not registered after the join: {keys}\n{}", out.report());
    }
    assert_eq!(value(&out, "CHECK ", "reservation"), "wero");
    assert!([K1, K2, K3].contains(&value(&out, "CHECK ", "holder").as_str()), "{}", out.report());
    let st: serde_json::Value = serde_json::from_str(&out.file("storage-status.json")).expect("baton storage status --json");
    let names: Vec<&str> = st["disks"][0]["keys"].as_array().unwrap().iter().filter_map(|k| k["node"]["name"].as_str()).collect();
    assert_eq!(names, vec!["node1", "node2", "node3"], "{st}");
    // 2. The hung node: fenced (key gone) before the service started on a
    // survivor; its writes fail from then on and none lands; it halts.
    let fence_ms: u64 = value(&out, "RESULT ", "hung_fence_ms").parse().unwrap();
    let service_ms: u64 = value(&out, "RESULT ", "hung_service_ms").parse().unwrap();
    assert_eq!(value(&out, "RESULT ", "fenced_before_service"), "1", "the service started before node1 was fenced\n{}", out.report());
    let hung = value(&out, "CHECK ", "hung");
    let hung_key = [K1, K2, K3][hung.parse::<usize>().unwrap() - 1];
    assert!(!value(&out, "CHECK ", "keys_after_fence").contains(hung_key), "{}", out.report());
    assert_eq!(value(&out, "CHECK ", "hung_ok_after_fail"), "0", "{}", out.report());
    assert_eq!(value(&out, "RESULT ", "writes_after_fence"), "0", "{}", out.report());
    let halt = value(&out, "CHECK ", "hung_halt");
    // Woken, it must halt; which of its checks gets there first is a race
    // the TCG guest's timing decides: its fenced disk (LocalFailure reason
    // 6), the survivors' word that it was forced out, or its own sight of
    // peers that went silent for it while it was stopped (LostQuorum; a CI
    // run saw this one). All three stop it holding anything; the safety
    // checks are above (no write landed after the fencing).
    assert!(
        halt.contains("LocalFailure{reason:6}") || halt.contains("ForcedOut") || halt.contains("LostQuorum"),
        "node{hung} halted for {halt}"
    );
    // 3. A graceful leave unregisters; the rejoin registers again.
    assert!(!value(&out, "CHECK ", "keys_after_leave").contains(K3), "{}", out.report());
    assert!(value(&out, "CHECK ", "keys_after_rejoin").contains(K3), "{}", out.report());
    // The crashed node (its preempted key's unit attention pending at its
    // start) rejoined and registered again.
    let crashed: usize = value(&out, "CHECK ", "crashed").parse().unwrap();
    assert!(value(&out, "CHECK ", "keys_after_crash_restart").contains([K1, K2, K3][crashed - 1]), "{}", out.report());
    eprintln!("hung node{hung}: fenced {fence_ms} ms after SIGSTOP, db up on a survivor {service_ms} ms after it; halt: {halt}");
}

#[test]
fn a_two_node_link_cut_leaves_exactly_one_side_with_the_disk_and_the_service() {
    if !vm_tests_possible() {
        return;
    }
    let out = run("fencing-two-node", 2, TWO_NODE);
    let winner = value(&out, "RESULT ", "winner");
    let loser = value(&out, "RESULT ", "loser");
    assert_ne!(winner, loser);
    let keys = value(&out, "CHECK ", "keys_after");
    let winner_key = if winner == "1" { K1 } else { K2 };
    assert_eq!(keys.trim_end_matches(','), winner_key, "only the winner's key is left\n{}", out.report());
    assert_eq!(value(&out, "RESULT ", "loser_writes_after_fence"), "0", "{}", out.report());
    eprintln!(
        "two-node cut: node{winner} won the race, node{loser} fenced itself and halted; fenced {} ms after the cut",
        value(&out, "RESULT ", "fence_ms")
    );
}

#[test]
fn bad_disks_are_refused_and_no_takeover_happens_unfenced() {
    if !vm_tests_possible() {
        return;
    }
    let out = run("fencing-errors", 3, ERRORS);
    for case in ["missing", "not-scsi"] {
        assert!(out.stdout.lines().any(|l| l == format!("CHECK refused={case}")), "{case}\n{}", out.report());
    }
    assert_eq!(value(&out, "CHECK ", "unfenced_takeover"), "0");
    eprintln!(
        "target down: fencing reported waiting {} ms after the crash; db up {} ms after the operator's confirmation",
        value(&out, "CHECK ", "waiting_after_ms"),
        value(&out, "CHECK ", "confirmed_service_ms")
    );
}
