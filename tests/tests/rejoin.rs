//! A node that halted for lost quorum ends its rejoin back-off once it
//! hears a majority of the cluster stably again (docs/membership.md,
//! "Halting"; the rule: core/src/rejoin.rs).

use std::time::{Duration, Instant};

use baton_tests::*;

/// `membership.rejoin_ms` here: the first halt waits 3 s, a second one
/// within a minute 6 s.
const REJOIN_MS: u64 = 3000;

#[test]
fn a_node_halted_for_lost_quorum_again_rejoins_before_its_back_off_once_it_hears_a_majority() {
    if !kernel_tests_possible() {
        return;
    }
    // 20 ms x 5: a silence bound of 100 ms, robust on a loaded machine.
    let mut c = Cluster::new("rejoin", 3, 1, 20, 5);
    c.extra_config = format!("[membership]\nrejoin_ms = {REJOIN_MS}\n");
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    let pid = c.agents[2].as_ref().unwrap().pid();
    let mut early = Vec::new();
    for round in 0..2 {
        let halts = c.log_lines(2, &["starting again as a new life"]).len();
        let early_before = c.log_lines(2, &["a majority heard again"]).len();
        // Node 3 cut off from both others: it halts for lost quorum.
        c.isolate(2);
        let halted = wait_until(Duration::from_secs(10), || c.log_lines(2, &["starting again as a new life"]).len() > halts);
        c.unisolate(2);
        let healed = Instant::now();
        assert!(halted.is_some(), "round {round}: node 3 did not halt while cut off:\n{}", c.agent_log(2));
        let halt = c.log_lines(2, &["starting again as a new life"]).pop().unwrap();
        assert!(halt.contains("LostQuorum"), "round {round}: {halt}");
        let back_off = REJOIN_MS << round;
        assert!(halt.contains(&format!("delay_ms={back_off}")), "round {round}: a back-off of {back_off} ms expected: {halt}");
        c.wait_all_joined(Duration::from_secs(30));
        eprintln!("round {round}: back-off {back_off} ms; node 3 joined again {:?} after the heal", healed.elapsed());
        early.push(c.log_lines(2, &["a majority heard again"]).into_iter().skip(early_before).collect::<Vec<_>>());
    }
    // The same process all along (it re-executes itself for a new life).
    assert_eq!(c.agents[2].as_ref().unwrap().pid(), pid);
    // First halt: the back-off is rejoin_ms itself, the shortest wait:
    // nothing to end early.
    assert!(early[0].is_empty(), "{:?}", early[0]);
    // Second halt within a minute: a back-off of 6 s, ended by the rule
    // once both peers were heard for a second, after at least rejoin_ms.
    assert_eq!(early[1].len(), 1, "the second wait did not end early:\n{}", c.agent_log(2));
    let line = &early[1][0];
    eprintln!("{line}");
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {line}")) + name.len() + 1;
        line[at..].chars().take_while(|ch| ch.is_ascii_digit()).collect::<String>().parse().unwrap()
    };
    let (waited, back_off, peers) = (field("waited_ms"), field("back_off_ms"), field("peers"));
    assert_eq!(back_off, 2 * REJOIN_MS);
    assert!(waited >= REJOIN_MS && waited < back_off, "waited {waited} ms of a {back_off} ms back-off");
    assert_eq!(peers, 2);
}

/// The back-off counts a node's halts in a row only while it keeps failing:
/// a halt after a life that was a joined member for `STABLE_MEMBER` (10 s,
/// agent/src/daemon/run.rs) waits `rejoin_ms` again. Before, every halt
/// within a minute of the previous start doubled it, so in chaos runs a node
/// forced out by separate faults 15–30 s apart (a member for 10–30 s in
/// between) reached the 60 s back-off and came back a minute after the heal
/// (docs/chaos.md, "The rejoin back-off after a forced leave").
#[test]
fn a_node_forced_out_again_after_ten_seconds_as_a_member_waits_rejoin_ms_not_a_doubled_back_off() {
    if !kernel_tests_possible() {
        return;
    }
    const REJOIN: u64 = 2000;
    let mut c = Cluster::new("rejoinfo", 3, 1, 20, 5);
    c.extra_config = format!("[membership]\nrejoin_ms = {REJOIN}\n");
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    // Mute node 3 (the others no longer hear it, it still hears them):
    // forced out. Rounds 0 and 1 back to back (round 1 right after node 3
    // joined again: still a flapping node, the back-off doubles); round 2
    // after 12 s as a member: the count starts again.
    for (round, (member_s, back_off, in_a_row)) in [(0u64, REJOIN, 1), (0, 2 * REJOIN, 2), (12, REJOIN, 1)].into_iter().enumerate() {
        std::thread::sleep(Duration::from_secs(member_s));
        let halts = c.log_lines(2, &["starting again as a new life"]).len();
        c.mute(2);
        let halted = wait_until(Duration::from_secs(10), || c.log_lines(2, &["starting again as a new life"]).len() > halts);
        c.unisolate(2);
        let healed = Instant::now();
        assert!(halted.is_some(), "round {round}: node 3 did not halt while muted:\n{}", c.agent_log(2));
        let halt = c.log_lines(2, &["starting again as a new life"]).pop().unwrap();
        eprintln!("round {round}: {halt}");
        assert!(halt.contains("ForcedOut"), "round {round}: {halt}");
        assert!(
            halt.contains(&format!("delay_ms={back_off} ")) && halt.contains(&format!("halts_in_a_row={in_a_row} ")),
            "round {round}: a back-off of {back_off} ms (halt {in_a_row} in a row) expected: {halt}"
        );
        c.wait_all_joined(Duration::from_secs(30));
        eprintln!("round {round}: node 3 joined again {:?} after the heal", healed.elapsed());
    }
}
