//! The control channel over loopback: 127.0.0.x is node x's address on link
//! 0, 127.0.1.x on link 1 (every 127/8 address is local on Linux). Each test
//! uses its own port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use baton_agent::control::channel::{self, Channel, ChannelConfig, ChannelError};
use baton_core::gmp::GmpMsg;
use baton_core::membership::{Barriers, ClusterState, Kind, LevelSpec, Msg, NodeEntry, NodeState, Report, Transition, TransitionId, ViewId, Want};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::Receiver;

const SECRET: [u8; 16] = *b"0123456789abcdef";
const CLUSTER: u32 = 4242;

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")))
        .with_test_writer()
        .try_init();
}

fn addr(link: usize, node: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, link as u8, node as u8))
}

fn config(me: u32, nodes: &[u32], links: usize, port: u16, incarnation: u64) -> ChannelConfig {
    ChannelConfig {
        me,
        cluster_id: CLUSTER,
        incarnation,
        psk_secret: SECRET,
        port,
        links: (0..links).map(|l| addr(l, me)).collect(),
        peers: nodes.iter().filter(|n| **n != me).map(|&n| (n, (0..links).map(|l| addr(l, n)).collect())).collect(),
    }
}

async fn start(cfg: ChannelConfig) -> (Channel, Receiver<(u32, Msg)>) {
    init_log();
    Channel::start(cfg).await.expect("channel starts")
}

async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `ch` has every link to every one of `peers` up.
async fn wait_connected(ch: &Channel, peers: &[u32], links: usize) {
    let ok = wait_until(Duration::from_secs(5), || {
        let st = ch.stats();
        peers.iter().all(|p| st.peers.get(p).is_some_and(|l| l.links_up() == links))
    })
    .await;
    assert!(ok, "not connected: {:?}", ch.stats());
}

/// A message whose content depends on (from, to), with some structure.
fn msg(from: u32, to: u32) -> Msg {
    let mut data = BTreeMap::new();
    data.insert(from, (from as u64 * 1000 + to as u64, [LevelSpec { level: 10 * to, barriers: Barriers { join: 1, leave: 2, forced_leave: 3 } }].into_iter().collect()));
    Msg::Gmp(GmpMsg::Data { id: (from as u64) << 32 | to as u64, subgroup: from, data })
}

fn report(incarnation: u64) -> Msg {
    Msg::Report(Report {
        incarnation,
        want: Want::Join,
        levels: [LevelSpec { level: 5, barriers: Barriers::ONE }].into_iter().collect(),
        done: BTreeSet::new(),
        seen: ViewId { term: 3, master: 1, master_incarnation: 7, version: 99 },
        state: None,
        max_change: 12,
        stop_all: false,
        answers: 0,
        voted: 0,
    })
}

/// A cluster state of `n` nodes (about `n` * 55 bytes of JSON).
fn big_state(n: u32) -> Msg {
    let nodes = (0..n)
        .map(|i| (i, NodeEntry { state: NodeState::Joined, incarnation: i as u64 * 3, levels: [LevelSpec { level: i, barriers: Barriers::ONE }].into_iter().collect() }))
        .collect();
    Msg::State(ClusterState {
        view: ViewId { term: 1, master: 1, master_incarnation: 1, version: n as u64 },
        origin: ViewId { term: 1, master: 1, master_incarnation: 1, version: 0 },
        nodes,
        transitions: BTreeMap::new(),
        change: 0,
        quorate: true,
        stopping: false,
    })
}

/// A `big_state` whose encoding is a little longer than `bytes` (the tests
/// mean sizes, not node counts: the encoding may change).
fn state_over(bytes: usize) -> Msg {
    let len = |m: &Msg| serde_json::to_vec(m).unwrap().len();
    let per_node = len(&big_state(100)) / 100;
    let mut n = (bytes / per_node) as u32;
    loop {
        let m = big_state(n);
        if len(&m) > bytes {
            return m;
        }
        n += n / 50 + 1;
    }
}

/// Receives until `want` (a multiset of (from, msg)) is all received; returns
/// whatever else arrived. Panics after `timeout`.
async fn expect_msgs(rx: &mut Receiver<(u32, Msg)>, mut want: Vec<(u32, Msg)>, timeout: Duration) -> Vec<(u32, Msg)> {
    let end = Instant::now() + timeout;
    let mut extra = Vec::new();
    while !want.is_empty() {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(got)) => {
                if let Some(i) = want.iter().position(|w| *w == got) {
                    want.swap_remove(i);
                } else {
                    extra.push(got);
                }
            }
            Ok(None) => panic!("channel closed; still expected {want:?}"),
            Err(_) => panic!("timed out; still expected {want:?}; got meanwhile {extra:?}"),
        }
    }
    extra
}

/// Nothing arrives for `d`.
async fn expect_silence(rx: &mut Receiver<(u32, Msg)>, d: Duration) {
    if let Ok(got) = tokio::time::timeout(d, rx.recv()).await {
        panic!("expected nothing, got {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_two_links_exchange_messages() {
    let port = 47310;
    let ids = [1, 2, 3];
    let mut nodes = Vec::new();
    for &id in &ids {
        nodes.push(start(config(id, &ids, 2, port, 100 + id as u64)).await);
    }
    for (i, (ch, _)) in nodes.iter().enumerate() {
        let others: Vec<u32> = ids.iter().copied().filter(|&p| p != ids[i]).collect();
        wait_connected(ch, &others, 2).await;
    }
    // Hellos carried the incarnations.
    let st = nodes[0].0.stats();
    assert_eq!(st.peers[&2].incarnation, Some(102));
    assert_eq!(st.peers[&3].incarnation, Some(103));
    assert_eq!(nodes[2].0.stats().peers[&1].incarnation, Some(101));

    // Every node sends a distinct message to every other, in both directions.
    for (i, (ch, _)) in nodes.iter().enumerate() {
        for &to in &ids {
            if to != ids[i] {
                assert!(ch.send(to, &msg(ids[i], to)));
                assert_eq!(ch.try_send(to, &report(ids[i] as u64)).unwrap(), 2, "queued on both links");
            }
        }
    }
    for (i, (_, rx)) in nodes.iter_mut().enumerate() {
        let me = ids[i];
        // One copy per link: duplicates are not removed.
        let want: Vec<(u32, Msg)> = ids
            .iter()
            .filter(|&&f| f != me)
            .flat_map(|&f| [(f, msg(f, me)), (f, msg(f, me)), (f, report(f as u64)), (f, report(f as u64))])
            .collect();
        let extra = expect_msgs(rx, want, Duration::from_secs(5)).await;
        assert!(extra.is_empty(), "unexpected: {extra:?}");
    }
    for (ch, _) in &nodes {
        // A sender counts a frame after its write returns, which can be
        // after the receiver got it: wait a moment for the counters.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while ch.stats().frames_sent < 8 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let st = ch.stats();
        assert_eq!(st.frames_sent, 8, "{st:?}");
        assert_eq!(st.frames_received, 8, "{st:?}");
        assert_eq!((st.frames_dropped, st.handshake_failures, st.bad_frames), (0, 0, 0), "{st:?}");
    }

    // Sizes: a large message (tens of KB) goes through, so does one of several
    // frames; one over the limit is refused.
    let (ch1, _) = &nodes[0];
    let big = state_over(20_000);
    let len = serde_json::to_vec(&big).unwrap().len();
    assert!(len > 20_000 && len < channel::MAX_MSG_LEN, "{len}");
    assert!(ch1.send(3, &big));
    expect_msgs(&mut nodes[2].1, vec![(1, big.clone()), (1, big)], Duration::from_secs(5)).await;
    // Longer than one frame: goes as parts, arrives whole (once per link).
    let long = state_over(channel::CHUNK_LEN * 2 + 1000);
    let len = serde_json::to_vec(&long).unwrap().len();
    assert!(len > channel::CHUNK_LEN * 2 && len < channel::MAX_MSG_LEN, "{len}");
    assert!(nodes[0].0.send(3, &long));
    expect_msgs(&mut nodes[2].1, vec![(1, long.clone()), (1, long)], Duration::from_secs(5)).await;
    let huge = state_over(channel::MAX_MSG_LEN);
    match nodes[0].0.try_send(3, &huge) {
        Err(ChannelError::TooLarge { size, max }) => assert!(size > max && max == channel::MAX_MSG_LEN),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!nodes[0].0.send(3, &huge));
    assert!(matches!(nodes[0].0.try_send(9, &report(1)), Err(ChannelError::UnknownPeer { node: 9 })));

    for (ch, _) in nodes {
        ch.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_secret_or_cluster_never_delivers() {
    let port = 47320;
    let ids = [1, 2, 3];
    let (a, mut rxa) = start(config(1, &ids, 1, port, 1)).await;
    // Node 2 with another secret; node 3 with the right secret but another cluster id.
    let mut c2 = config(2, &ids, 1, port, 1);
    c2.psk_secret[0] ^= 1;
    let (b, mut rxb) = start(c2).await;
    let mut c3 = config(3, &ids, 1, port, 1);
    c3.cluster_id = CLUSTER + 1;
    let (c, mut rxc) = start(c3).await;

    // Node 1 dials 2 and 3; node 2 dials 3: every handshake fails, on both ends.
    let ok = wait_until(Duration::from_secs(5), || {
        a.stats().handshake_failures >= 2 && b.stats().handshake_failures >= 2 && c.stats().handshake_failures >= 2
    })
    .await;
    assert!(ok, "{:?} {:?} {:?}", a.stats(), b.stats(), c.stats());
    for ch in [&a, &b, &c] {
        let st = ch.stats();
        assert_eq!(st.sessions, 0, "{st:?}");
        assert!(st.peers.values().all(|l| l.links_up() == 0), "{st:?}");
        assert_eq!(st.hello_rejects, 0, "the key fails before any hello: {st:?}");
    }
    for (ch, me) in [(&a, 1), (&b, 2), (&c, 3)] {
        for to in ids.into_iter().filter(|&t| t != me) {
            assert!(!ch.send(to, &msg(me, to)));
            assert!(matches!(ch.try_send(to, &msg(me, to)), Err(ChannelError::NotConnected { node }) if node == to));
        }
    }
    // Keep trying for a while: still nothing.
    for _ in 0..10 {
        a.send(2, &msg(1, 2));
        a.send(3, &msg(1, 3));
        b.send(1, &msg(2, 1));
        c.send(1, &msg(3, 1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expect_silence(&mut rxa, Duration::from_millis(200)).await;
    expect_silence(&mut rxb, Duration::from_millis(10)).await;
    expect_silence(&mut rxc, Duration::from_millis(10)).await;
    assert!(a.stats().handshake_failures > 2, "the dialer retries: {:?}", a.stats());
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_reconnects_within_two_seconds() {
    let port = 47330;
    let ids = [1, 2, 3];
    let (n1, mut rx1) = start(config(1, &ids, 2, port, 1)).await;
    let (n2, rx2) = start(config(2, &ids, 2, port, 1)).await;
    let (n3, mut rx3) = start(config(3, &ids, 2, port, 1)).await;
    wait_connected(&n1, &[2, 3], 2).await;
    wait_connected(&n3, &[1, 2], 2).await;

    // Node 2 (a listener for node 1, a dialer for node 3) dies and comes back.
    n2.shutdown().await;
    drop(rx2);
    assert!(wait_until(Duration::from_secs(2), || n1.stats().peers[&2].links_up() == 0 && n3.stats().peers[&2].links_up() == 0).await);
    assert!(!n1.send(2, &msg(1, 2)));
    let t0 = Instant::now();
    let (n2, mut rx2) = start(config(2, &ids, 2, port, 2)).await;

    // Keep sending until every direction delivered again.
    let mut got = BTreeSet::new();
    let deadline = t0 + Duration::from_secs(2);
    while got.len() < 4 && Instant::now() < deadline {
        n1.send(2, &msg(1, 2));
        n3.send(2, &msg(3, 2));
        n2.send(1, &msg(2, 1));
        n2.send(3, &msg(2, 3));
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Ok((from, m)) = rx2.try_recv() {
            assert_eq!(m, msg(from, 2));
            got.insert((from, 2));
        }
        for (rx, me) in [(&mut rx1, 1), (&mut rx3, 3)] {
            while let Ok((from, m)) = rx.try_recv() {
                assert_eq!((from, m), (2, msg(2, me)));
                got.insert((2, me));
            }
        }
    }
    let took = t0.elapsed();
    assert_eq!(got.len(), 4, "only {got:?} delivered within {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Every link comes back, and the peers saw the new incarnation.
    assert!(wait_until(Duration::from_secs(2), || n1.stats().peers[&2].links_up() == 2 && n3.stats().peers[&2].links_up() == 2).await);
    assert_eq!(n1.stats().peers[&2].incarnation, Some(2));
    assert_eq!(n3.stats().peers[&2].incarnation, Some(2));
    assert_eq!(n2.stats().peers[&1].incarnation, Some(1));

    // The lowest id (the dialer of everyone) restarting works too.
    n1.shutdown().await;
    let (n1, mut rx1) = start(config(1, &ids, 2, port, 2)).await;
    wait_connected(&n1, &[2, 3], 2).await;
    assert!(n2.send(1, &report(22)));
    expect_msgs(&mut rx1, vec![(2, report(22)), (2, report(22))], Duration::from_secs(2)).await;
    assert_eq!(n1.stats().handshake_failures + n2.stats().handshake_failures + n3.stats().handshake_failures, 0);
    for ch in [n1, n2, n3] {
        ch.shutdown().await;
    }
}

// ---- a hand-made peer speaking the wire format of the module doc ----

async fn raw_connect(from: IpAddr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from, 0)).unwrap();
    s.connect(to).await.unwrap()
}

async fn write_frame(s: &mut TcpStream, body: &[u8]) {
    let mut f = (body.len() as u16).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    s.write_all(&f).await.unwrap();
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut b = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut b).await.ok()?;
    Some(b)
}

/// The connection gets closed by the other end (within 5 s).
async fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout(end.saturating_duration_since(Instant::now()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // keepalives etc.
            Err(_) => panic!("connection still open"),
        }
    }
}

/// Noise handshake as the dialer; returns the transport state.
async fn raw_handshake(s: &mut TcpStream, cluster: u32, secret: &[u8; 16]) -> snow::TransportState {
    let psk = channel::derive_psk(cluster, secret);
    let mut hs = snow::Builder::new(channel::NOISE_PARAMS.parse().unwrap()).psk(0, &psk).unwrap().build_initiator().unwrap();
    let mut buf = vec![0u8; 65535];
    let n = hs.write_message(&[], &mut buf).unwrap();
    assert_eq!(n, 48);
    write_frame(s, &buf[..n]).await;
    let f = read_frame(s).await.expect("handshake answer");
    hs.read_message(&f, &mut buf).unwrap();
    hs.into_transport_mode().unwrap()
}

async fn raw_send(s: &mut TcpStream, ts: &mut snow::TransportState, plain: &[u8]) {
    let mut buf = vec![0u8; 65535];
    let n = ts.write_message(plain, &mut buf).unwrap();
    write_frame(s, &buf[..n]).await;
}

/// The next non-keepalive plaintext.
async fn raw_recv(s: &mut TcpStream, ts: &mut snow::TransportState) -> Vec<u8> {
    let mut buf = vec![0u8; 65535];
    loop {
        let f = tokio::time::timeout(Duration::from_secs(5), read_frame(s)).await.expect("a frame in time").expect("a frame");
        let n = ts.read_message(&f, &mut buf).unwrap();
        if buf[..n] != [channel::FRAME_KEEPALIVE] {
            return buf[..n].to_vec();
        }
    }
}

fn hello(node: u32, cluster: u32, incarnation: u64) -> Vec<u8> {
    let mut h = vec![channel::FRAME_HELLO];
    h.extend_from_slice(&node.to_be_bytes());
    h.extend_from_slice(&cluster.to_be_bytes());
    h.extend_from_slice(&incarnation.to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_closes_only_that_connection() {
    let port = 47340;
    // Nodes 2, 3 and 4 run; node 1 is configured but down (the hand-made
    // peer below speaks as node 1 without disturbing anyone's session).
    let ids = [1, 2, 3, 4];
    let (n2, mut rx2) = start(config(2, &ids, 2, port, 1)).await;
    let (n3, mut rx3) = start(config(3, &ids, 2, port, 1)).await;
    let (n4, mut rx4) = start(config(4, &ids, 2, port, 1)).await;
    for (ch, others) in [(&n2, [3, 4]), (&n3, [2, 4]), (&n4, [2, 3])] {
        wait_connected(ch, &others, 2).await;
    }
    let sessions = [n2.stats().sessions, n3.stats().sessions, n4.stats().sessions];
    let target = SocketAddr::new(addr(0, 4), port);
    // Node 1's address (configured, its agent down): the listeners admit
    // configured peers' addresses only.
    let attacker = addr(0, 1);

    // A handshake-sized frame of garbage.
    let mut g = raw_connect(attacker, target).await;
    let mut junk = vec![0u8, 48];
    junk.extend((0..48u8).map(|i| i.wrapping_mul(37)));
    g.write_all(&junk).await.unwrap();
    expect_closed(&mut g).await;
    // Not even a frame: bytes whose "length" is longer than any handshake frame.
    let mut g = raw_connect(attacker, target).await;
    g.write_all(&[0xff; 300]).await.unwrap();
    expect_closed(&mut g).await;
    assert!(wait_until(Duration::from_secs(1), || n4.stats().handshake_failures == 2).await, "{:?}", n4.stats());

    // A peer that completes the handshake (it has the secret) then sends an
    // oversized frame, or a frame that does not decrypt.
    for bad in [vec![0xffu8, 0xff, 1, 2, 3], vec![0, 20, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]] {
        let mut s = raw_connect(addr(0, 1), target).await;
        let mut ts = raw_handshake(&mut s, CLUSTER, &SECRET).await;
        raw_send(&mut s, &mut ts, &hello(1, CLUSTER, 9)).await;
        assert_eq!(raw_recv(&mut s, &mut ts).await, hello(4, CLUSTER, 1));
        s.write_all(&bad).await.unwrap();
        expect_closed(&mut s).await;
    }
    assert!(wait_until(Duration::from_secs(1), || n4.stats().bad_frames == 2).await, "{:?}", n4.stats());
    assert_eq!(n4.stats().handshake_failures, 2);
    assert_eq!(n4.stats().sessions, sessions[2] + 2, "the two hand-made sessions");

    // Every other connection is untouched, and traffic flows.
    for (ch, others) in [(&n2, [3, 4]), (&n3, [2, 4]), (&n4, [2, 3])] {
        wait_connected(ch, &others, 2).await;
    }
    assert_eq!([n2.stats().sessions, n3.stats().sessions], [sessions[0], sessions[1]]);
    assert!(n2.send(4, &msg(2, 4)) && n4.send(3, &msg(4, 3)) && n3.send(2, &msg(3, 2)));
    expect_msgs(&mut rx4, vec![(2, msg(2, 4)), (2, msg(2, 4))], Duration::from_secs(2)).await;
    expect_msgs(&mut rx3, vec![(4, msg(4, 3)), (4, msg(4, 3))], Duration::from_secs(2)).await;
    expect_msgs(&mut rx2, vec![(3, msg(3, 2)), (3, msg(3, 2))], Duration::from_secs(2)).await;
    for ch in [&n2, &n3] {
        let st = ch.stats();
        assert_eq!((st.handshake_failures, st.bad_frames), (0, 0), "{st:?}");
    }

    // A connection that says nothing is closed after the handshake timeout.
    let mut quiet = raw_connect(attacker, target).await;
    expect_closed(&mut quiet).await;
    assert!(wait_until(Duration::from_secs(1), || n4.stats().handshake_failures == 3).await);
    assert_eq!([n2.stats().sessions, n3.stats().sessions], [sessions[0], sessions[1]]);
    for ch in [n2, n3, n4] {
        ch.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hellos_are_checked_and_the_wire_format_is_as_documented() {
    let port = 47350;
    // Only node 2 runs; nodes 1 and 3 are configured peers.
    let (n2, mut rx2) = start(config(2, &[1, 2, 3], 1, port, 5)).await;
    let target = SocketAddr::new(addr(0, 2), port);

    // Right key, wrong cluster id in the hello (a peer with another cluster
    // id cannot get this far: its key differs; see the wrong-secret test).
    let rejected = [hello(1, CLUSTER + 1, 1), hello(7, CLUSTER, 1), hello(3, CLUSTER, 1), hello(2, CLUSTER, 1)];
    for (i, h) in rejected.iter().enumerate() {
        let mut s = raw_connect(addr(0, 1), target).await;
        let mut ts = raw_handshake(&mut s, CLUSTER, &SECRET).await;
        raw_send(&mut s, &mut ts, h).await;
        expect_closed(&mut s).await;
        let st = n2.stats();
        assert_eq!((st.hello_rejects, st.handshake_failures, st.sessions), (i as u64 + 1, i as u64 + 1, 0), "{st:?}");
    }
    expect_silence(&mut rx2, Duration::from_millis(50)).await;

    // Node 1's hello is accepted: node 2 answers with its own, and messages
    // flow both ways, JSON in a type-1 frame.
    let mut s = raw_connect(addr(0, 1), target).await;
    let mut ts = raw_handshake(&mut s, CLUSTER, &SECRET).await;
    raw_send(&mut s, &mut ts, &hello(1, CLUSTER, 77)).await;
    assert_eq!(raw_recv(&mut s, &mut ts).await, hello(2, CLUSTER, 5));
    assert!(wait_until(Duration::from_secs(1), || n2.stats().peers[&1].links_up() == 1).await);
    assert_eq!(n2.stats().peers[&1].incarnation, Some(77));

    let m = report(77);
    let mut plain = vec![channel::FRAME_MSG];
    plain.extend(serde_json::to_vec(&m).unwrap());
    raw_send(&mut s, &mut ts, &plain).await;
    expect_msgs(&mut rx2, vec![(1, m)], Duration::from_secs(2)).await;

    assert!(n2.send(1, &msg(2, 1)));
    let p = raw_recv(&mut s, &mut ts).await;
    assert_eq!(p[0], channel::FRAME_MSG);
    assert_eq!(serde_json::from_slice::<Msg>(&p[1..]).unwrap(), msg(2, 1));

    // An authenticated message that does not decode is skipped, the session stays.
    raw_send(&mut s, &mut ts, b"\x01{\"NoSuchVariant\":1}").await;
    let m2 = report(78);
    let mut plain = vec![channel::FRAME_MSG];
    plain.extend(serde_json::to_vec(&m2).unwrap());
    raw_send(&mut s, &mut ts, &plain).await;
    expect_msgs(&mut rx2, vec![(1, m2)], Duration::from_secs(2)).await;
    let st = n2.stats();
    assert_eq!((st.bad_frames, st.frames_received, st.frames_sent, st.sessions), (1, 2, 1, 1), "{st:?}");

    // A hello after the session is up is a protocol error: closed.
    raw_send(&mut s, &mut ts, &hello(1, CLUSTER, 77)).await;
    expect_closed(&mut s).await;
    assert!(wait_until(Duration::from_secs(1), || n2.stats().peers[&1].links_up() == 0).await);
    assert_eq!(n2.stats().bad_frames, 2);

    // A silent peer (no keepalive) is dropped after the idle timeout.
    let mut s = raw_connect(addr(0, 1), target).await;
    let mut ts = raw_handshake(&mut s, CLUSTER, &SECRET).await;
    raw_send(&mut s, &mut ts, &hello(1, CLUSTER, 78)).await;
    assert_eq!(raw_recv(&mut s, &mut ts).await, hello(2, CLUSTER, 5));
    let t0 = Instant::now();
    expect_closed(&mut s).await;
    let idle = t0.elapsed();
    assert!(idle >= channel::IDLE_TIMEOUT - Duration::from_millis(200) && idle < channel::IDLE_TIMEOUT + Duration::from_secs(1), "{idle:?}");
    n2.shutdown().await;
    // The receiver ends after shutdown.
    assert!(rx2.recv().await.is_none());
}

#[tokio::test]
async fn bad_configurations_and_bind_failures() {
    init_log();
    let port = 47360;
    let mut c = config(1, &[1, 2], 2, port, 1);
    c.peers[0].1.pop();
    assert!(matches!(Channel::start(c).await, Err(ChannelError::Config { .. })));
    let mut c = config(1, &[1, 2], 1, port, 1);
    c.peers.push((1, vec![addr(0, 1)]));
    assert!(matches!(Channel::start(c).await, Err(ChannelError::Config { .. })));

    let (a, _rx) = Channel::start(config(1, &[1, 2], 1, port, 1)).await.unwrap();
    match Channel::start(config(1, &[1, 2], 1, port, 2)).await {
        Err(e @ ChannelError::Bind { .. }) => {
            let text = e.to_string();
            assert!(text.contains("127.0.0.1") && text.contains(&port.to_string()), "{text}");
        }
        Err(e) => panic!("expected Bind, got {e}"),
        Ok(_) => panic!("expected Bind, got a channel"),
    }
    a.shutdown().await;
    // Shutdown released the port.
    let (a, _rx) = Channel::start(config(1, &[1, 2], 1, port, 3)).await.unwrap();
    drop(a);
}

/// `LevelSpec`s, repeated in every node entry and transition path of the
/// state, encode compactly; the struct form of earlier versions still decodes.
#[test]
fn level_specs_encode_compactly() {
    let one = LevelSpec { level: 30, barriers: Barriers::ONE };
    let three = LevelSpec { level: 25, barriers: Barriers { join: 1, leave: 2, forced_leave: 3 } };
    assert_eq!(serde_json::to_string(&one).unwrap(), "30");
    assert_eq!(serde_json::to_string(&three).unwrap(), "[25,1,2,3]");
    for l in [one, three] {
        assert_eq!(serde_json::from_str::<LevelSpec>(&serde_json::to_string(&l).unwrap()).unwrap(), l);
    }
    let old = r#"{"level":25,"barriers":{"join":1,"leave":2,"forced_leave":3}}"#;
    assert_eq!(serde_json::from_str::<LevelSpec>(old).unwrap(), three);
    for bad in ["-1", "4294967296", "[1,2,3]", "[1,2,3,4,5]", r#"{"level":1}"#, "\"x\""] {
        assert!(serde_json::from_str::<LevelSpec>(bad).is_err(), "{bad}");
    }
    // Whole messages round-trip.
    let mut with_transitions = big_state(40);
    if let Msg::State(st) = &mut with_transitions {
        for (node, leave_pending) in [(3, false), (7, true)] {
            let t = Transition {
                id: TransitionId { node, incarnation: 1_763_784_000_123_456, kind: Kind::Join },
                path: vec![one, three],
                pos: 1,
                barrier: 0,
                participants: (1..=32).collect(),
                leave_pending,
            };
            st.transitions.insert(node, t);
        }
    }
    let text = serde_json::to_string(&with_transitions).unwrap();
    assert_eq!(text.matches("leave_pending").count(), 1, "{text}");
    for m in [msg(1, 2), report(5), big_state(40), with_transitions] {
        assert_eq!(serde_json::from_slice::<Msg>(&serde_json::to_vec(&m).unwrap()).unwrap(), m);
    }
}

/// A dialer whose backoff has grown to its maximum (the peer was down for
/// seconds) dials at once when the datapath hears the peer (`peer_heard`),
/// and keeps retrying quickly for a moment if the peer's listener is not up
/// yet; without that it would wait up to a whole backoff (1 s). A peer that
/// dials us is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_heard_redials_at_once() {
    let port = 47370;
    let ids = [1, 2];
    let (n1, _rx1) = start(config(1, &ids, 2, port, 1)).await;
    for round in 0..2 {
        // The backoff grows to 1 s (50 + 100 + ... + 800 ms of failed dials).
        tokio::time::sleep(Duration::from_millis(1800)).await;
        assert_eq!(n1.stats().peers[&2].links_up(), 0);
        // Heard before it listens: the first dial fails, the fast redials don't.
        n1.peer_heard(2, None);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let (n2, _rx2) = start(config(2, &ids, 2, port, 10 + round)).await;
        assert!(wait_until(Duration::from_secs(2), || n1.stats().peers[&2].links_up() == 2).await);
        let took = t0.elapsed();
        assert!(took < Duration::from_millis(300), "round {round}: connected {took:?} after the peer started listening");
        // peer_heard about a peer that dials us, or an unknown one: nothing.
        n2.peer_heard(1, None);
        n2.peer_heard(9, Some(0));
        n2.shutdown().await;
        assert!(wait_until(Duration::from_secs(2), || n1.stats().peers[&2].links_up() == 0).await);
    }
    n1.shutdown().await;
}

/// The connection is closed by the other end within `d`.
async fn closed_within(s: &mut TcpStream, d: Duration) -> bool {
    let mut buf = [0u8; 64];
    let end = Instant::now() + d;
    loop {
        match tokio::time::timeout(end.saturating_duration_since(Instant::now()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connections_before_authentication_are_bounded() {
    let port = 47460;
    let ids = [1, 2, 3, 4];
    let (n4, _rx4) = start(config(4, &ids, 1, port, 1)).await;
    let target = SocketAddr::new(addr(0, 4), port);

    // Not a configured peer's address: closed at once, never a handshake.
    let mut stranger = raw_connect(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 66)), target).await;
    assert!(closed_within(&mut stranger, Duration::from_millis(300)).await, "a stranger's connection must be closed at once");
    assert!(wait_until(Duration::from_secs(1), || n4.stats().preauth_rejected == 1).await, "{:?}", n4.stats());
    assert_eq!(n4.stats().connections, 0, "a refused connection never reaches the handshake");

    // Node 1's address (its agent is down): 20 idle connections. Only the
    // newest PREAUTH_PER_SOURCE stay; the 12 older ones are closed at once
    // (well before the first-frame deadline).
    let from = addr(0, 1);
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(raw_connect(from, target).await);
    }
    assert!(wait_until(Duration::from_secs(1), || n4.stats().preauth_evicted == 12).await, "{:?}", n4.stats());
    for s in idle.iter_mut().take(12) {
        assert!(closed_within(s, Duration::from_millis(300)).await, "an evicted connection stays open");
    }
    // With 8 idle ones pending, a real peer (the key, node 1's address)
    // still gets its session: its connection evicts the oldest idle one.
    let mut real = raw_connect(from, target).await;
    let mut ts = raw_handshake(&mut real, CLUSTER, &SECRET).await;
    raw_send(&mut real, &mut ts, &hello(1, CLUSTER, 9)).await;
    assert_eq!(raw_recv(&mut real, &mut ts).await, hello(4, CLUSTER, 1));
    assert!(wait_until(Duration::from_secs(1), || n4.stats().peers[&1].up[0]).await, "{:?}", n4.stats());
    // The idle ones that were never evicted are closed by the first-frame
    // deadline (FIRST_FRAME_TIMEOUT = 1 s), not the whole handshake's (3 s).
    let t = Instant::now();
    for s in idle.iter_mut().skip(13) {
        assert!(closed_within(s, Duration::from_millis(2000)).await, "an idle connection outlived the first-frame deadline");
    }
    assert!(t.elapsed() < Duration::from_millis(2000), "{:?}", t.elapsed());
    assert!(n4.stats().peers[&1].up[0], "the real session is up");
    n4.shutdown().await;
}
