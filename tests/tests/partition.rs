//! The heal of a partition, seen by a client (docs/addresses.md, "Again when
//! a node joins the view").
//!
//! Needs root; under CI=true a skip is a failure.

use std::time::{Duration, Instant};

use baton_tests::svc::*;
use baton_tests::*;
use baton_tests::state::NodeState;

/// A client on the far side of a partition, with the old owner: web moves
/// to a survivor, whose announcements do not reach the client, so its
/// neighbour entry keeps node1's MAC address (reachable for 15–45 s). When
/// the partition heals and node1 rejoins, the new owner announces the
/// address again and the client is answered by it within seconds, not after
/// its entry expires.
#[test]
fn a_client_cut_off_with_the_old_owner_is_answered_by_the_new_one_soon_after_the_heal() {
    if !kernel_tests_possible() {
        return;
    }
    let mut svc = Svc::new("pheal", 3, &web_group("costly", "")).with_client();
    web_on_node1(&mut svc);
    let before = neigh(&svc.client());
    svc.c.isolate(0);
    svc.c.client_deaf_to_arp(0, true);
    let (owner_i, _) = wait_web_taken_over(&svc, 1, (1, 2), "the survivors did not take web over from the cut-off node1");
    // The takeover's announcements (3 × 20 ms) are over.
    std::thread::sleep(Duration::from_millis(500));
    let during = neigh(&svc.client());
    svc.c.client_deaf_to_arp(0, false);
    svc.c.unisolate(0);
    let healed = Instant::now();
    // Node1 (halted: it lost quorum) rejoins as a new life.
    let rejoined = wait_until(Duration::from_secs(15), || svc.c.node_state(owner_i, 1) == Some(NodeState::Joined));
    svc.check(rejoined.is_some(), || "node1 did not rejoin after the heal".into());
    let rejoin_s = healed.elapsed().as_secs_f64();
    // 5 s after the rejoin: without the new announcement the client's entry
    // still points at node1 (it was confirmed less than 15 s ago).
    svc.expect_page(&svc.name(owner_i), Duration::from_secs(5), "after the heal");
    eprintln!(
        "client's entry for {VIP}: before {before:?}, during the partition {during:?}, now {:?}; node1 rejoined {rejoin_s:.1} s after the heal, the client was answered by {} {:.1} s after it",
        neigh(&svc.client()),
        svc.name(owner_i),
        healed.elapsed().as_secs_f64()
    );
    let again = svc.c.log_lines(owner_i, &["announcing the address again"]);
    svc.check(!again.is_empty(), || format!("{} did not announce {VIP} again when node1 rejoined", svc.name(owner_i)));
}
