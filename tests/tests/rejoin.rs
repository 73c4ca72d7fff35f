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
