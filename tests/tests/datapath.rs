//! Kernel tests of the datapath: real XDP programs, real agents, real
//! network namespaces. They need root; under CI=true they must run.

use std::time::Duration;

use baton_tests::*;

#[test]
fn peers_come_up_and_liveness_is_in_the_pinned_map() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("up", 3, 2, 10, 3);
    c.start_all();
    c.wait_all_up(Duration::from_secs(10));
    let st = c.status(0);
    eprintln!("{}", serde_json::to_string_pretty(&st).unwrap());
    panic!("x");
}
