//! Kernel tests of the agent's own critical failures (S0.1 with the seed
//! 000 reason codes; agent/src/datapath/selfcheck.rs): each one ends clustering on
//! the node with a distress of its reason, which the other nodes receive.
//! Needs root; under CI=true a skip is a failure.

use std::sync::Arc;
use std::time::Duration;

use baton_tests::*;
use baton_tests::state::NodeState;

fn exited(c: &mut Cluster, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
    let mut st = None;
    wait_until(within, || {
        st = c.agents[i].as_mut().and_then(|a| a.child.try_wait().unwrap());
        st.is_some()
    });
    if st.is_some() {
        c.agents[i] = None;
    }
    st
}

fn logged_failure(c: &Cluster, i: usize, name: &str) -> bool {
    c.log_lines(i, &["critical failure of this node (S0)", &format!("reason=\"{name}\"")]).len()
        + c.log_lines(i, &["critical failure of this node (S0)", &format!("reason={name}")]).len()
        > 0
}

#[test]
fn a_pinned_map_changed_behind_the_agents_back_is_a_corruption() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("scor", 3, 1, 20, 5);
    c.start_all();
    c.wait_all_joined(Duration::from_secs(15));
    // Someone writes into node1's BATON_CONFIG (as `bpftool map update` would).
    {
        use aya::maps::{Array, Map, MapData};
        let md = MapData::from_pin(c.bpffs_dir(0).join("BATON_CONFIG")).unwrap();
        let mut a: Array<MapData, baton_common::DatapathConfig> = Array::try_from(Map::Array(md)).unwrap();
        let mut v = a.get(&0, 0).unwrap();
        v.timeout_ns += 1_000_000;
        a.set(0, v, 0).unwrap();
    }
    let e = c.wait_event(1, Duration::from_secs(5), |e| e["event"] == "peer_distress" && e["node"] == 1);
    let e = e.unwrap_or_else(|| panic!("node2 saw no distress of node1:\n{}", c.agent_log(0)));
    assert_eq!(e["reason"], baton_common::DISTRESS_CORRUPTION, "{e}");
    let st = exited(&mut c, 0, Duration::from_secs(10)).unwrap_or_else(|| panic!("node1's agent did not stop:\n{}", c.agent_log(0)));
    assert!(!st.success(), "an S0 failure is an error exit: {st}");
    assert!(logged_failure(&c, 0, "corruption"), "{}", c.agent_log(0));
}

#[test]
fn heartbeats_without_a_control_channel_are_a_communication_failure() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("scom", 3, 1, 20, 5);
    c.start(0);
    c.start(1);
    c.wait_all_joined(Duration::from_secs(15));
    // node3's control port is not the cluster's: its heartbeats flow, but
    // it can reach nobody on the control channel, nor anybody it.
    let text = format!("{}\n[membership]\ncontrol_port = 7499\n", c.config_text(2));
    let path = c.node_dir(2).join("baton.toml");
    std::fs::create_dir_all(c.node_dir(2)).unwrap();
    std::fs::write(&path, text).unwrap();
    let a = Agent::spawn(&c.hosts[2].ns, &path, &c.node_dir(2).join("agent.log"));
    c.agents[2] = Some(a);
    let e = c.wait_event(0, Duration::from_secs(20), |e| e["event"] == "peer_distress" && e["node"] == 3);
    let e = e.unwrap_or_else(|| panic!("node1 saw no distress of node3:\n{}", c.agent_log(2)));
    assert_eq!(e["reason"], baton_common::DISTRESS_COMMUNICATION, "{e}");
    let st = exited(&mut c, 2, Duration::from_secs(10)).unwrap_or_else(|| panic!("node3's agent did not stop:\n{}", c.agent_log(2)));
    assert!(!st.success(), "{st}");
    assert!(logged_failure(&c, 2, "communication"), "{}", c.agent_log(2));
    // The two others go on.
    assert_eq!(c.my_state(0), Some(NodeState::Joined));
}

#[test]
fn undecodable_messages_from_an_authenticated_peer_are_a_protocol_failure() {
    if !kernel_tests_possible() {
        return;
    }
    let mut c = Cluster::new("sprt", 2, 1, 20, 5);
    c.start(0);
    // The test speaks for node2 on the control channel, with the cluster's
    // key, and sends messages that no baton can decode.
    let hex = std::fs::read_to_string(&c.secret).unwrap();
    let mut key = [0u8; 16];
    for (i, b) in key.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap();
    }
    let (me, peer) = (c.hosts[1].addrs[0].parse().unwrap(), c.hosts[0].addrs[0].parse().unwrap());
    let cluster_id = c.cluster_id;
    let sent = in_netns(&c.hosts[1].ns.name.clone(), move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let cfg = baton_agent::control::channel::ChannelConfig {
                me: 2,
                cluster_id,
                incarnation: 1,
                psk_secret: key,
                port: baton_common::DEFAULT_PORT + 1,
                links: vec![me],
                peers: vec![(1, vec![peer])],
            };
            let (ch, _rx) = baton_agent::control::channel::Channel::start(cfg).await.unwrap();
            let mut sent = 0;
            for _ in 0..200 {
                if matches!(ch.is_up(1), Ok(true)) {
                    let garbage: Arc<[u8]> = Arc::from(&[&[baton_agent::control::channel::FRAME_MSG][..], b"{not a message"].concat()[..]);
                    if ch.send_encoded(1, &garbage).is_ok() {
                        sent += 1;
                    }
                    if sent >= 30 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            ch.shutdown().await;
            sent
        })
    });
    // (node1 closes the connection when it stops, which may cut the sending short.)
    assert!(sent >= baton_agent::datapath::selfcheck::PROTOCOL_BAD_FRAMES, "the test could send only {sent} messages to node1");
    let st = exited(&mut c, 0, Duration::from_secs(15)).unwrap_or_else(|| panic!("node1's agent did not stop:\n{}", c.agent_log(0)));
    assert!(!st.success(), "{st}");
    assert!(logged_failure(&c, 0, "protocol"), "{}", c.agent_log(0));
}
