//! Group membership protocol with subgroup leaders (requirement S3).
//!
//! baton commits every membership change with this protocol. A *change* is a
//! request with an id ([`ChangeId`]) and the member set of the new group. Each
//! member contributes some *group data* (`D`, opaque here); when the protocol
//! completes, every live member holds the same map `subgroup index -> data`.
//!
//! # Protocol
//!
//! * **Subgroups.** The members of the request, sorted by [`NodeId`], are cut
//!   into consecutive chunks of `subgroup_size` ([`subgroups`]). The chunk
//!   index is the subgroup index; it is computed over the *original* member
//!   set of the request, so indexes never move while the change runs.
//! * **Leaders, decided locally.** The leader of a subgroup is its lowest
//!   member not known to have failed. Every member computes this on its own
//!   from its set of failed members `F`: no election message is ever sent.
//! * **Request.** The initiator sends `Request{id, members}` to every other
//!   member. A member receiving it clears its local flag ("my subgroup's data
//!   was sent") and asks its caller for its data ([`GmpAction::NeedData`],
//!   answered with [`GmpInput::LocalData`]; the initiator passes its data in
//!   [`GmpInput::Initiate`]). Every member is asked, because any member may
//!   become its subgroup's leader later.
//! * **Data.** Each subgroup leader sends `Data{subgroup, data}` once, to every
//!   other live member, on behalf of its subgroup. The flag is set when a
//!   member receives its own subgroup's Data (or sends it as leader).
//! * **Ack rounds.** Round `r` is `1 + |F|`: it starts at 1 and every failure
//!   learned during the change starts a new round (acks of older rounds no
//!   longer count). A member that holds the data of every subgroup that still
//!   has a live member sends `Ack{r}` to its subgroup leader (a leader acks
//!   itself locally). A leader whose live subgroup members all acked `r`
//!   sends `SubgroupAcked{r, subgroup}` to every other live member. A member
//!   completes when it has `SubgroupAcked{r}` of the current round from every
//!   subgroup that has live members: all members acked, so all hold all the
//!   data, and no failure happened during the round (it would have started
//!   round `r + 1`). It then processes the data ([`GmpAction::Complete`]).
//! * **Failures.** [`GmpInput::MemberFailed`] (the "membership change
//!   message") adds the node to `F`, which starts a new round and decides the
//!   leaders again. A member that becomes leader sends its subgroup's data:
//!   if its flag is set, the data it received on behalf of the subgroup (data
//!   of a subgroup is the subgroup's, not a member's: a failed leader's data
//!   survives it); if its flag is clear (the old leader failed before its
//!   Data reached this member), its own data. Subgroups whose members all
//!   failed are dropped: they are no longer waited for, and are not in the
//!   result.
//!
//! # Where this goes beyond the claim text, and why
//!
//! The claims assume every member learns every failure, in the same order,
//! and that a message sent is received. Over a lossy, reordering network
//! with failures noticed at different times, the literal protocol can commit
//! different results on different members, or hang. These additions keep it
//! correct; none of them costs a message in a failure-free, loss-free change:
//!
//! 1. **A new leader always announces its subgroup's data** (the flag
//!    decides *which* data it sends, not *whether* it sends). A member that
//!    got the failed leader's Data cannot tell whether the new leader got it
//!    too: if the new leader's flag is clear it will send different data, and
//!    if its flag is set and it stays silent, members the old leader never
//!    reached wait forever. So a member only counts the data it received
//!    *from the current leader* of each subgroup (it keeps, per subgroup,
//!    what each sender sent, at most `subgroup_size` entries), and each
//!    leader's data is frozen once sent. This costs `N - 1` Data messages
//!    per subgroup whose leader fails, the same as the claim's "flag clear"
//!    case.
//! 2. **Rounds are tied to the failed set.** Two members may both be in
//!    round 2 having learned *different* failures. The extra message
//!    [`GmpMsg::Failed`] carries the sender's `F`: a member sends it to its
//!    leader whenever its `F` grows, and a leader sends it to every member.
//!    Receivers merge it into their own `F` (so failures travel to members
//!    that have not noticed them yet), and an Ack or SubgroupAcked of round
//!    `r > 1` only counts if the sender's last `F` equals the receiver's. A
//!    member's `F` only grows, so its `F` of a given size is unique.
//! 3. **A member that completed answers for the change.** Any later message
//!    of the same change is answered with [`GmpMsg::Decided`] (round, `F`,
//!    data; rate limited per peer), which the receiver adopts, unless it
//!    already knows the sender failed. This is what lets a slower member
//!    finish when it learned of a failure after the others completed (it is
//!    in a round nobody else will ack), and adopting only from members not
//!    known to have failed keeps every live member's result the same: a
//!    member that adopted never acks again, so no other round can complete
//!    without it.
//! 4. **Retransmission** on [`GmpInput::Tick`], every `retransmit_ns` in
//!    which this node learned nothing new about the change (no new
//!    request holder, data, ack, SubgroupAcked or failed set: a period with
//!    news means messages are flowing, and resending into a slow, loaded
//!    network only makes it slower), of what is still missing: the Request by the initiator to members it has
//!    not heard from (once the member a node got the Request from failed,
//!    the lowest live member known to have the request takes over, and
//!    keeps doing it); Data and `F` by each leader to the
//!    members not yet known to have them (own subgroup: no Ack of this
//!    round; other subgroups: no SubgroupAcked of this round); each member's
//!    Ack to its leader, and the same Ack, as a "resend please", to every
//!    leader whose SubgroupAcked of this round it misses. A leader answers an
//!    Ack of the current round with its SubgroupAcked if it already sent
//!    that (preceded by its `F` after a failure), and an Ack of an older
//!    round, or from a member whose `F` it does not know, with its `F`. A
//!    member answers a retransmitted Request with its `F` ("I have it").
//! 5. Messages for a future change that arrive before its Request are
//!    buffered (at most 4096) and replayed when the Request arrives.
//!    `MemberFailed` received while no change is running (or after it
//!    completed, or for a non-member), and the failures of a change
//!    superseded before it completed, are remembered and applied to the next
//!    change that includes those nodes; the memory is cleared whenever a
//!    change completes.
//!
//! Results: `Complete{members, data, rounds}` with `members` = original
//! members minus `F`, `data` = one entry per subgroup with a member in
//! `members`, `rounds` = `1 + |F|`. All live members report the same three
//! values (the randomized tests below check this under loss, duplication,
//! reordering and crashes).
//!
//! Data hand-over: the core asks for this node's data with
//! [`GmpAction::NeedData`] when a Request arrives, and the caller answers
//! with [`GmpInput::LocalData`] (at once or later; until then this node
//! cannot send Data as a leader, but it acks and completes normally when it
//! does not lead). There is no `set_local_data`.
//!
//! Assumed: crash-stop members and a failure detector that eventually tells
//! every live member about every crashed member, and never reports a live
//! one (a member reported failed is ignored from then on: its messages are
//! dropped, as if it had crashed).
//!
//! # Message counts
//!
//! With `N` members, subgroups of `k` and `S = ceil(N / k)` subgroups, a
//! change without failures and without loss sends exactly
//!
//! ```text
//!   (N - 1)        Requests        (initiator to everyone else)
//! + S * (N - 1)    Data            (each leader to everyone else)
//! + (N - S)        Acks            (non-leaders to their leader)
//! + S * (N - 1)    SubgroupAcked   (each leader to everyone else)
//! = (N - 1) * (2S + 1) + N - S
//! ```
//!
//! i.e. O(S * N). With `k = 1` (no subgroups, `S = N`) that is
//! `2N^2 - N - 1`, O(N^2): N = 3: 14, 8: 119, 16: 495, 32: 2015. With
//! `k = 4`: N = 3 (S = 1): 8, 8 (S = 2): 41, 16 (S = 4): 147, 32 (S = 8): 551.
//! A failure adds `Failed` notices (one per non-leader, `N - 1` per leader)
//! and, if the failed member led its subgroup, one Data broadcast by the new
//! leader, plus the re-acks of the new round (`N - S` Acks, `S * (N - 1)`
//! SubgroupAcked).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;

use crate::{Instant, NodeId};

/// Id of a membership change. Greater ids are newer.
pub type ChangeId = u64;

/// At most this many messages of future changes are buffered.
const PENDING_CAP: usize = 4096;
/// At most this many failures reported outside a change are remembered.
const REMEMBERED_CAP: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct GmpConfig {
    pub me: NodeId,
    /// Members per subgroup (consecutive in sorted NodeId order). 1 = "no
    /// subgroups": every member leads itself and sends its data.
    pub subgroup_size: usize,
    /// Retransmission period for unacknowledged protocol messages (ns).
    pub retransmit_ns: u64,
}

/// Partition: sorted member ids chunked by `size` (size 0 treated as 1).
/// Subgroup index = chunk index.
pub fn subgroups(members: &BTreeSet<NodeId>, size: usize) -> Vec<BTreeSet<NodeId>> {
    let ids: Vec<NodeId> = members.iter().copied().collect();
    ids.chunks(size.max(1)).map(|c| c.iter().copied().collect()).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GmpMsg<D> {
    /// The membership request, sent by the initiator to every member.
    Request { id: ChangeId, members: BTreeSet<NodeId> },
    /// Group data of one subgroup, sent by its leader to every other member.
    Data { id: ChangeId, subgroup: u32, data: D },
    /// A member's ack for `round`, sent to its subgroup leader. Sent to the
    /// leader of another subgroup it means "I acked `round`; I miss your
    /// SubgroupAcked for it".
    Ack { id: ChangeId, round: u32 },
    /// A leader: every live member of my subgroup acked `round`; sent to
    /// every member.
    SubgroupAcked { id: ChangeId, round: u32, subgroup: u32 },
    /// The members the sender knows failed during change `id` (its round is
    /// `1 + failed.len()`). Carries failures to members that may not have
    /// noticed them, and ties rounds to failed sets (see the module doc).
    /// With an empty set it is also the answer to a retransmitted Request
    /// ("I have it").
    Failed { id: ChangeId, failed: BTreeSet<NodeId> },
    /// "I completed change `id`": the answer of a member that completed to
    /// any message of that change, so a slower member completes with the
    /// same result. `members` of the result = request members - `failed`.
    Decided { id: ChangeId, round: u32, failed: BTreeSet<NodeId>, data: BTreeMap<u32, D> },
}

impl<D> GmpMsg<D> {
    /// The change this message belongs to.
    pub fn id(&self) -> ChangeId {
        match self {
            GmpMsg::Request { id, .. }
            | GmpMsg::Data { id, .. }
            | GmpMsg::Ack { id, .. }
            | GmpMsg::SubgroupAcked { id, .. }
            | GmpMsg::Failed { id, .. }
            | GmpMsg::Decided { id, .. } => *id,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GmpInput<D> {
    /// This node initiates change `id` for group `members` (this node must be
    /// in it, else the input is ignored). Sends Request to every other member
    /// and starts locally.
    Initiate { id: ChangeId, members: BTreeSet<NodeId>, my_data: D },
    /// The caller's answer to [`GmpAction::NeedData`]: this node's data for
    /// change `id` (learned from a Request). Ignored for any other change,
    /// or if the data is already known.
    LocalData { id: ChangeId, my_data: D },
    Receive { from: NodeId, msg: GmpMsg<D> },
    /// The failure detector says `node` failed (the "membership change
    /// message" of claim 6).
    MemberFailed { node: NodeId },
    /// The failure detector says `node` is alive again: forget a failure of
    /// it remembered for a later change (a change in progress keeps it).
    MemberRecovered { node: NodeId },
    /// Time passed (retransmissions).
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum GmpAction<D> {
    Send { to: NodeId, msg: GmpMsg<D> },
    /// The core needs this node's data for change `id` (learned from a
    /// Request): answer with [`GmpInput::LocalData`].
    NeedData { id: ChangeId },
    /// Change `id` committed: a round with no failure completed. `members` =
    /// the live members at completion, `data` = subgroup index -> data
    /// (subgroups computed over the ORIGINAL member set of the request, so
    /// indexes are stable; only subgroups with a member in `members`),
    /// `rounds` = ack rounds used (`1 + ` the number of failed members).
    Complete { id: ChangeId, members: BTreeSet<NodeId>, data: BTreeMap<u32, D>, rounds: u32 },
}

/// A completed change's result, kept to answer slower members.
#[derive(Clone, Debug)]
struct Decision<D> {
    round: u32,
    failed: BTreeSet<NodeId>,
    data: BTreeMap<u32, D>,
}

/// The state of one change (the current one).
#[derive(Debug)]
struct Change<D> {
    me: NodeId,
    id: ChangeId,
    /// Who sent us the Request (ourselves if we initiated).
    initiator: NodeId,
    /// The original member set of the request, sorted.
    members: BTreeSet<NodeId>,
    sorted: Vec<NodeId>,
    size: usize,
    groups: Vec<BTreeSet<NodeId>>,
    my_group: u32,
    /// Members known failed (`F`). The round is `1 + failed.len()`.
    failed: BTreeSet<NodeId>,
    my_data: Option<D>,
    /// Data received per subgroup, per sender (at most the subgroup's size).
    received: BTreeMap<u32, BTreeMap<NodeId, D>>,
    /// What this node sent as its subgroup's leader (frozen once sent).
    announced: Option<D>,
    /// The latest (largest) failed set each peer told us.
    peer_failed: BTreeMap<NodeId, BTreeSet<NodeId>>,
    /// Leader side: the highest round each member of my subgroup acked.
    acks: BTreeMap<NodeId, u32>,
    /// The round this node acked last (0: none).
    acked_round: u32,
    /// Leader side: the round this node sent SubgroupAcked for (0: none).
    sg_acked_sent: u32,
    /// (subgroup, sender) -> highest round of SubgroupAcked received.
    sg_acked: BTreeMap<(u32, NodeId), u32>,
    /// Members known to have the Request.
    heard_from: BTreeSet<NodeId>,
    /// I re-sent the Request (see `resends_request`).
    resender: bool,
    next_retx: Instant,
    /// [`Change::progress_mark`] at the last retransmission tick.
    retx_mark: u64,
    decision: Option<Decision<D>>,
    /// Set when `decision` is made, taken by `Gmp::handle`.
    just_decided: bool,
    /// When we last answered each peer with Decided.
    replied: BTreeMap<NodeId, Instant>,
}

impl<D: Clone + Eq + Debug> Change<D> {
    fn new(me: NodeId, id: ChangeId, initiator: NodeId, members: BTreeSet<NodeId>, size: usize) -> Self {
        let size = size.max(1);
        let sorted: Vec<NodeId> = members.iter().copied().collect();
        let groups = subgroups(&members, size);
        let my_group = (sorted.binary_search(&me).unwrap_or(0) / size) as u32;
        Change {
            me,
            id,
            initiator,
            members,
            sorted,
            size,
            groups,
            my_group,
            failed: BTreeSet::new(),
            my_data: None,
            received: BTreeMap::new(),
            announced: None,
            peer_failed: BTreeMap::new(),
            acks: BTreeMap::new(),
            acked_round: 0,
            sg_acked_sent: 0,
            sg_acked: BTreeMap::new(),
            heard_from: BTreeSet::new(),
            resender: false,
            next_retx: Instant::ZERO,
            retx_mark: 0,
            decision: None,
            just_decided: false,
            replied: BTreeMap::new(),
        }
    }

    fn round(&self) -> u32 {
        1 + self.failed.len() as u32
    }

    /// Grows whenever this node learns something new about the change (a
    /// member has the request, data, an ack, a SubgroupAcked, a failed
    /// set), and never shrinks: every term is a set size or a highest
    /// round. Bounded, so a change cannot "progress" forever.
    fn progress_mark(&self) -> u64 {
        self.heard_from.len() as u64
            + self.received.values().map(|m| m.len() as u64).sum::<u64>()
            + self.acks.values().map(|r| *r as u64).sum::<u64>()
            + self.sg_acked.values().map(|r| *r as u64).sum::<u64>()
            + self.peer_failed.values().map(|f| f.len() as u64).sum::<u64>()
            + self.failed.len() as u64
            + self.acked_round as u64
    }

    fn group_of(&self, n: NodeId) -> Option<u32> {
        self.sorted.binary_search(&n).ok().map(|i| (i / self.size) as u32)
    }

    fn is_live(&self, n: NodeId) -> bool {
        self.members.contains(&n) && !self.failed.contains(&n)
    }

    /// Lowest member of subgroup `g` not known failed.
    fn leader(&self, g: u32) -> Option<NodeId> {
        self.groups.get(g as usize)?.iter().copied().find(|m| !self.failed.contains(m))
    }

    fn my_leader(&self) -> NodeId {
        self.leader(self.my_group).unwrap_or(self.me)
    }

    /// Live members other than me.
    fn others(&self) -> Vec<NodeId> {
        self.members.iter().copied().filter(|&m| m != self.me && !self.failed.contains(&m)).collect()
    }

    /// Subgroups that still have a live member, with their leader.
    fn live_groups(&self) -> Vec<(u32, NodeId)> {
        (0..self.groups.len() as u32).filter_map(|g| self.leader(g).map(|l| (g, l))).collect()
    }

    /// The local flag of the claims: my subgroup's data was sent (I sent it
    /// as leader, or received it).
    #[cfg(test)]
    fn flag(&self) -> bool {
        self.announced.is_some() || self.received.get(&self.my_group).is_some_and(|m| !m.is_empty())
    }

    /// Did `s` tell us the same failed set we have?
    fn in_sync(&self, s: NodeId) -> bool {
        s == self.me
            || match self.peer_failed.get(&s) {
                Some(f) => *f == self.failed,
                None => self.failed.is_empty(),
            }
    }

    /// The data of subgroup `g` as it counts now: what its current leader
    /// sent.
    fn effective(&self, g: u32) -> Option<&D> {
        let l = self.leader(g)?;
        if l == self.me {
            self.announced.as_ref()
        } else {
            self.received.get(&g)?.get(&l)
        }
    }

    /// Leader side: `m` acked the current round (with our failed set).
    fn member_acked(&self, m: NodeId) -> bool {
        let r = self.round();
        if m == self.me {
            self.acked_round == r
        } else {
            self.acks.get(&m) == Some(&r) && self.in_sync(m)
        }
    }

    /// We hold a valid SubgroupAcked of the current round for subgroup `g`.
    fn group_acked(&self, g: u32) -> bool {
        match self.leader(g) {
            Some(l) => self.sg_acked.get(&(g, l)) == Some(&self.round()) && self.in_sync(l),
            None => true,
        }
    }

    /// Do I re-send the Request? The initiator does, and so does a member
    /// that re-sent it once (it is the "initiator" of those it reached).
    /// When the member we got the Request from failed, the lowest live
    /// member known to have the request takes over.
    fn resends_request(&self) -> bool {
        self.initiator == self.me
            || self.resender
            || (self.failed.contains(&self.initiator)
                && self.heard_from.iter().copied().find(|m| !self.failed.contains(m)) == Some(self.me))
    }
}

struct Out<D> {
    q: VecDeque<GmpAction<D>>,
    sent: u64,
}

impl<D> Out<D> {
    fn send(&mut self, to: NodeId, msg: GmpMsg<D>) {
        self.sent += 1;
        self.q.push_back(GmpAction::Send { to, msg });
    }
}

/// The group membership protocol core of one node. See the module doc.
pub struct Gmp<D> {
    cfg: GmpConfig,
    ch: Option<Change<D>>,
    /// Messages of future changes, by change id, in arrival order.
    pending: BTreeMap<ChangeId, Vec<(NodeId, GmpMsg<D>)>>,
    pending_len: usize,
    /// Failures reported outside a running change (see the module doc).
    remembered: BTreeSet<NodeId>,
    out: Out<D>,
}

impl<D: Clone + Eq + Debug> Gmp<D> {
    pub fn new(cfg: GmpConfig) -> Self {
        Gmp {
            cfg,
            ch: None,
            pending: BTreeMap::new(),
            pending_len: 0,
            remembered: BTreeSet::new(),
            out: Out { q: VecDeque::new(), sent: 0 },
        }
    }

    pub fn handle(&mut self, now: Instant, input: GmpInput<D>) {
        match input {
            GmpInput::Initiate { id, members, my_data } => {
                if !members.contains(&self.cfg.me) || self.ch.as_ref().is_some_and(|c| id <= c.id) {
                    return;
                }
                self.start(now, id, self.cfg.me, members, Some(my_data));
            }
            GmpInput::LocalData { id, my_data } => {
                if let Some(ch) = self.ch.as_mut() {
                    if ch.id == id && ch.my_data.is_none() {
                        ch.my_data = Some(my_data);
                        progress(ch, &mut self.out);
                    }
                }
            }
            GmpInput::Receive { from, msg } => self.receive(now, from, msg),
            GmpInput::MemberFailed { node } => {
                if node == self.cfg.me {
                    return;
                }
                match self.ch.as_mut() {
                    Some(ch) if ch.decision.is_none() && ch.members.contains(&node) => {
                        add_failed(ch, &mut self.out, [node]);
                        progress(ch, &mut self.out);
                    }
                    _ => {
                        if self.remembered.len() < REMEMBERED_CAP {
                            self.remembered.insert(node);
                        }
                    }
                }
            }
            GmpInput::MemberRecovered { node } => {
                self.remembered.remove(&node);
            }
            GmpInput::Tick => {
                let retx = self.cfg.retransmit_ns;
                if let Some(ch) = self.ch.as_mut() {
                    if ch.decision.is_none() && now >= ch.next_retx {
                        // Only a change that learned nothing new for a
                        // whole period retransmits: while messages of it
                        // still arrive (a slow, loaded network), nothing
                        // is lost yet and resending would only add load.
                        let mark = ch.progress_mark();
                        if mark == ch.retx_mark {
                            retransmit(ch, &mut self.out);
                        }
                        ch.retx_mark = mark;
                        ch.next_retx = now.plus_ns(retx);
                    }
                }
            }
        }
        if let Some(ch) = self.ch.as_mut() {
            if std::mem::take(&mut ch.just_decided) {
                // Failures remembered before this change are now settled.
                self.remembered.clear();
            }
        }
    }

    pub fn poll_action(&mut self) -> Option<GmpAction<D>> {
        self.out.q.pop_front()
    }

    /// When the core wants a [`GmpInput::Tick`]: while a change runs, its
    /// next retransmission time.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.ch.as_ref().filter(|c| c.decision.is_none()).map(|c| c.next_retx)
    }

    /// A value that grows whenever the change in progress makes progress
    /// at this node (see `Change::progress_mark`); 0 without a change.
    pub fn progress_mark(&self) -> u64 {
        self.ch.as_ref().filter(|c| c.decision.is_none()).map(|c| c.progress_mark()).unwrap_or(0)
    }

    /// Total count of Send actions emitted.
    pub fn messages_sent(&self) -> u64 {
        self.out.sent
    }

    /// The change in progress (None when idle or when the latest change
    /// completed).
    pub fn current(&self) -> Option<ChangeId> {
        self.ch.as_ref().filter(|c| c.decision.is_none()).map(|c| c.id)
    }

    /// The latest change this node completed, if it is still the latest one
    /// it knows (it still answers slower members for it).
    pub fn last_completed(&self) -> Option<ChangeId> {
        self.ch.as_ref().filter(|c| c.decision.is_some()).map(|c| c.id)
    }

    fn start(&mut self, now: Instant, id: ChangeId, initiator: NodeId, members: BTreeSet<NodeId>, my_data: Option<D>) {
        let me = self.cfg.me;
        let mut ch = Change::new(me, id, initiator, members, self.cfg.subgroup_size);
        ch.next_retx = now.plus_ns(self.cfg.retransmit_ns);
        ch.heard_from.insert(me);
        ch.heard_from.insert(initiator);
        ch.retx_mark = ch.progress_mark();
        if initiator == me {
            for m in ch.others() {
                self.out.send(m, GmpMsg::Request { id, members: ch.members.clone() });
            }
            ch.my_data = my_data;
        } else {
            self.out.q.push_back(GmpAction::NeedData { id });
        }
        if let Some(old) = self.ch.take().filter(|c| c.decision.is_none()) {
            // Superseded before it completed: its failures still hold.
            for n in old.failed {
                if self.remembered.len() < REMEMBERED_CAP {
                    self.remembered.insert(n);
                }
            }
        }
        let pre: Vec<NodeId> = self.remembered.iter().copied().filter(|n| ch.members.contains(n)).collect();
        add_failed(&mut ch, &mut self.out, pre);
        self.ch = Some(ch);
        // Replay what arrived early; forget anything older.
        let later = id.checked_add(1).map(|next| self.pending.split_off(&next)).unwrap_or_default();
        let early = std::mem::replace(&mut self.pending, later).remove(&id).unwrap_or_default();
        self.pending_len = self.pending.values().map(Vec::len).sum();
        for (from, msg) in early {
            self.receive(now, from, msg);
        }
        if let Some(ch) = self.ch.as_mut() {
            if ch.id == id {
                progress(ch, &mut self.out);
            }
        }
    }

    fn receive(&mut self, now: Instant, from: NodeId, msg: GmpMsg<D>) {
        let me = self.cfg.me;
        if from == me {
            return;
        }
        let id = msg.id();
        let cur = self.ch.as_ref().map(|c| c.id);
        if cur.is_none_or(|c| id > c) {
            match msg {
                GmpMsg::Request { id, members } => {
                    if members.contains(&me) && members.contains(&from) {
                        self.start(now, id, from, members, None);
                    }
                }
                msg => {
                    if self.pending_len < PENDING_CAP {
                        self.pending.entry(id).or_default().push((from, msg));
                        self.pending_len += 1;
                    }
                }
            }
            return;
        }
        if cur != Some(id) {
            return; // an older change
        }
        let retx = self.cfg.retransmit_ns;
        let Some(ch) = self.ch.as_mut() else { return };
        if !ch.members.contains(&from) || ch.failed.contains(&from) {
            return;
        }
        if let Some(d) = &ch.decision {
            // Completed: answer a member still working on this change.
            if matches!(msg, GmpMsg::Decided { .. }) {
                return;
            }
            let due = ch.replied.get(&from).is_none_or(|t| now.since(*t) >= retx / 2 || now < *t);
            if due {
                ch.replied.insert(from, now);
                let msg = GmpMsg::Decided { id, round: d.round, failed: d.failed.clone(), data: d.data.clone() };
                self.out.send(from, msg);
            }
            return;
        }
        ch.heard_from.insert(from);
        let round = ch.round();
        match msg {
            GmpMsg::Request { .. } => {
                // A retransmitted Request: say we have it.
                self.out.send(from, GmpMsg::Failed { id, failed: ch.failed.clone() });
            }
            GmpMsg::Data { subgroup, data, .. } => {
                if ch.group_of(from) == Some(subgroup) {
                    ch.received.entry(subgroup).or_default().entry(from).or_insert(data);
                }
            }
            GmpMsg::Ack { round: r, .. } => {
                let i_lead = ch.my_leader() == me;
                let had_sg = ch.sg_acked_sent == round;
                if ch.group_of(from) == Some(ch.my_group) {
                    // Kept even if I do not lead (yet): I may once the
                    // sender's view of failures reaches me.
                    let e = ch.acks.entry(from).or_insert(0);
                    *e = (*e).max(r);
                }
                if r < round || (r == round && !ch.in_sync(from)) {
                    // The sender is behind, or has not told us its failed set.
                    self.out.send(from, GmpMsg::Failed { id, failed: ch.failed.clone() });
                } else if r == round && had_sg && i_lead {
                    // It misses our SubgroupAcked (and, after a failure,
                    // maybe our failed set, without which it does not count).
                    if round > 1 {
                        self.out.send(from, GmpMsg::Failed { id, failed: ch.failed.clone() });
                    }
                    self.out.send(from, GmpMsg::SubgroupAcked { id, round, subgroup: ch.my_group });
                }
            }
            GmpMsg::SubgroupAcked { round: r, subgroup, .. } => {
                if ch.groups.get(subgroup as usize).is_some_and(|g| g.contains(&from)) {
                    let e = ch.sg_acked.entry((subgroup, from)).or_insert(0);
                    *e = (*e).max(r);
                    let g = ch.groups[subgroup as usize].clone();
                    ch.heard_from.extend(g);
                }
            }
            GmpMsg::Failed { failed, .. } => {
                let failed: BTreeSet<NodeId> = failed.intersection(&ch.members).copied().collect();
                let e = ch.peer_failed.entry(from).or_default();
                if failed.len() > e.len() {
                    *e = failed.clone();
                }
                add_failed(ch, &mut self.out, failed);
            }
            GmpMsg::Decided { round, failed, data, .. } => {
                // `from` is not known failed (checked above): adopt.
                let members: BTreeSet<NodeId> = ch.members.difference(&failed).copied().collect();
                ch.decision = Some(Decision { round, failed, data: data.clone() });
                ch.just_decided = true;
                self.out.q.push_back(GmpAction::Complete { id, members, data, rounds: round });
            }
        }
        progress(ch, &mut self.out);
    }
}

/// Adds `nodes` (members other than me) to the failed set; if it grew,
/// tells my leader (or, if I lead, every member) the new set.
fn add_failed<D: Clone + Eq + Debug>(ch: &mut Change<D>, out: &mut Out<D>, nodes: impl IntoIterator<Item = NodeId>) {
    if ch.decision.is_some() {
        return;
    }
    let before = ch.failed.len();
    for n in nodes {
        if n != ch.me && ch.members.contains(&n) {
            ch.failed.insert(n);
        }
    }
    if ch.failed.len() == before {
        return;
    }
    let l = ch.my_leader();
    let msg = GmpMsg::Failed { id: ch.id, failed: ch.failed.clone() };
    if l == ch.me {
        for m in ch.others() {
            out.send(m, msg.clone());
        }
    } else {
        out.send(l, msg);
    }
}

/// Moves the protocol forward as far as the local state allows: send my
/// subgroup's data if I lead it, ack, send SubgroupAcked, complete.
fn progress<D: Clone + Eq + Debug>(ch: &mut Change<D>, out: &mut Out<D>) {
    if ch.decision.is_some() {
        return;
    }
    let me = ch.me;
    let id = ch.id;
    let round = ch.round();
    let g = ch.my_group;
    let leader = ch.my_leader();

    // 1. Leader: send the subgroup's data, once. Flag set: the data received
    // on behalf of the subgroup (from the latest earlier leader); else mine.
    if leader == me && ch.announced.is_none() {
        let received = ch.received.get(&g).and_then(|m| m.range(..me).next_back()).map(|(_, d)| d.clone());
        if let Some(data) = received.or_else(|| ch.my_data.clone()) {
            ch.announced = Some(data.clone());
            for m in ch.others() {
                out.send(m, GmpMsg::Data { id, subgroup: g, data: data.clone() });
            }
        }
    }

    // 2. Ack once I hold the data of every subgroup with a live member.
    let live = ch.live_groups();
    if ch.acked_round != round && live.iter().all(|&(h, _)| ch.effective(h).is_some()) {
        ch.acked_round = round;
        if leader != me {
            out.send(leader, GmpMsg::Ack { id, round });
        }
    }

    // 3. Leader: all live members of my subgroup acked this round.
    if leader == me
        && ch.sg_acked_sent != round
        && ch.groups[g as usize].iter().filter(|&&m| ch.is_live(m)).all(|&m| ch.member_acked(m))
    {
        ch.sg_acked_sent = round;
        ch.sg_acked.insert((g, me), round);
        for m in ch.others() {
            out.send(m, GmpMsg::SubgroupAcked { id, round, subgroup: g });
        }
    }

    // 4. Complete: every subgroup with a live member acked this round.
    if ch.acked_round == round && live.iter().all(|&(h, _)| ch.group_acked(h)) {
        let data: BTreeMap<u32, D> =
            live.iter().filter_map(|&(h, _)| ch.effective(h).map(|d| (h, d.clone()))).collect();
        let members: BTreeSet<NodeId> = ch.members.difference(&ch.failed).copied().collect();
        ch.decision = Some(Decision { round, failed: ch.failed.clone(), data: data.clone() });
        ch.just_decided = true;
        out.q.push_back(GmpAction::Complete { id, members, data, rounds: round });
    }
}

/// Re-sends what is still missing (see the module doc, point 4).
fn retransmit<D: Clone + Eq + Debug>(ch: &mut Change<D>, out: &mut Out<D>) {
    let me = ch.me;
    let id = ch.id;
    let round = ch.round();
    let leader = ch.my_leader();
    let others = ch.others();

    if ch.resends_request() {
        for &m in &others {
            if !ch.heard_from.contains(&m) {
                ch.resender = true;
                out.send(m, GmpMsg::Request { id, members: ch.members.clone() });
            }
        }
    }

    if leader == me {
        for &m in &others {
            let (has_data, has_failed) = match ch.group_of(m) {
                Some(h) if h == ch.my_group => (ch.member_acked(m), ch.in_sync(m)),
                Some(h) => (ch.group_acked(h), ch.group_acked(h)),
                None => (true, true),
            };
            if round > 1 && !has_failed {
                out.send(m, GmpMsg::Failed { id, failed: ch.failed.clone() });
            }
            if let (false, Some(data)) = (has_data, &ch.announced) {
                out.send(m, GmpMsg::Data { id, subgroup: ch.my_group, data: data.clone() });
            }
        }
    } else if round > 1 && !ch.group_acked(ch.my_group) {
        out.send(leader, GmpMsg::Failed { id, failed: ch.failed.clone() });
    }

    if ch.acked_round == round {
        for (h, l) in ch.live_groups() {
            if l != me && !ch.group_acked(h) {
                out.send(l, GmpMsg::Ack { id, round });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    type G = Gmp<u64>;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn node(me: NodeId, k: usize) -> G {
        Gmp::new(GmpConfig { me, subgroup_size: k, retransmit_ns: 20_000_000 })
    }

    fn drain(g: &mut G) -> Vec<GmpAction<u64>> {
        std::iter::from_fn(|| g.poll_action()).collect()
    }

    fn send(to: NodeId, msg: GmpMsg<u64>) -> GmpAction<u64> {
        GmpAction::Send { to, msg }
    }

    fn recv(g: &mut G, from: NodeId, msg: GmpMsg<u64>) -> Vec<GmpAction<u64>> {
        g.handle(Instant::ZERO, GmpInput::Receive { from, msg });
        drain(g)
    }

    const T0: Instant = Instant(0);

    #[test]
    fn subgroups_partition() {
        assert_eq!(subgroups(&set(&[5, 1, 3]), 2), vec![set(&[1, 3]), set(&[5])]);
        assert_eq!(subgroups(&set(&[5, 1, 3]), 0), vec![set(&[1]), set(&[3]), set(&[5])]);
        assert_eq!(subgroups(&set(&[]), 4), Vec::<BTreeSet<NodeId>>::new());
    }

    /// Three members, subgroups of 2: {1, 2} led by 1, {3} led by 3. Node 1
    /// initiates. Every action, in order.
    #[test]
    fn three_members_subgroups_of_two_exact_actions() {
        let (mut n1, mut n2, mut n3) = (node(1, 2), node(2, 2), node(3, 2));
        let members = set(&[1, 2, 3]);
        let req = GmpMsg::Request { id: 7, members: members.clone() };
        let data0 = GmpMsg::Data { id: 7, subgroup: 0, data: 101 };
        let data1 = GmpMsg::Data { id: 7, subgroup: 1, data: 103 };
        let sga0 = GmpMsg::SubgroupAcked { id: 7, round: 1, subgroup: 0 };
        let sga1 = GmpMsg::SubgroupAcked { id: 7, round: 1, subgroup: 1 };
        let done = GmpAction::Complete {
            id: 7,
            members: members.clone(),
            data: [(0, 101), (1, 103)].into_iter().collect(),
            rounds: 1,
        };

        // Node 1: Requests, then (as leader of subgroup 0) its data.
        n1.handle(T0, GmpInput::Initiate { id: 7, members: members.clone(), my_data: 101 });
        assert_eq!(
            drain(&mut n1),
            vec![send(2, req.clone()), send(3, req.clone()), send(2, data0.clone()), send(3, data0.clone())]
        );
        assert_eq!(n1.current(), Some(7));
        assert!(n1.ch.as_ref().unwrap().flag());

        // Node 2 (member of subgroup 0, not leader): asks for its data,
        // sends nothing until it holds both subgroups' data.
        assert_eq!(recv(&mut n2, 1, req.clone()), vec![GmpAction::NeedData { id: 7 }]);
        assert!(!n2.ch.as_ref().unwrap().flag());
        n2.handle(T0, GmpInput::LocalData { id: 7, my_data: 102 });
        assert_eq!(drain(&mut n2), vec![]);
        assert_eq!(recv(&mut n2, 1, data0.clone()), vec![]);
        assert!(n2.ch.as_ref().unwrap().flag());

        // Node 3 leads subgroup 1 alone: sends its data once it has it, and
        // once it holds subgroup 0's data acks itself and reports its
        // subgroup acked.
        assert_eq!(recv(&mut n3, 1, req.clone()), vec![GmpAction::NeedData { id: 7 }]);
        n3.handle(T0, GmpInput::LocalData { id: 7, my_data: 103 });
        assert_eq!(drain(&mut n3), vec![send(1, data1.clone()), send(2, data1.clone())]);
        assert_eq!(recv(&mut n3, 1, data0.clone()), vec![send(1, sga1.clone()), send(2, sga1.clone())]);

        // Node 1 gets subgroup 1's data: acks itself, waits for node 2.
        assert_eq!(recv(&mut n1, 3, data1.clone()), vec![]);
        // Node 2 gets it: acks to its leader, node 1.
        assert_eq!(recv(&mut n2, 3, data1.clone()), vec![send(1, GmpMsg::Ack { id: 7, round: 1 })]);
        // Node 1: its whole subgroup acked.
        assert_eq!(recv(&mut n1, 2, GmpMsg::Ack { id: 7, round: 1 }), vec![send(2, sga0.clone()), send(3, sga0.clone())]);
        // Completion once both subgroups acked round 1.
        assert_eq!(recv(&mut n1, 3, sga1.clone()), vec![done.clone()]);
        assert_eq!(recv(&mut n2, 3, sga1.clone()), vec![]);
        assert_eq!(recv(&mut n2, 1, sga0.clone()), vec![done.clone()]);
        assert_eq!(recv(&mut n3, 1, sga0.clone()), vec![done.clone()]);

        // (N-1)(2S+1) + N-S = 2*5 + 1 = 11 messages.
        assert_eq!((n1.messages_sent(), n2.messages_sent(), n3.messages_sent()), (6, 1, 4));
        for n in [&n1, &n2, &n3] {
            assert_eq!(n.current(), None);
            assert_eq!(n.last_completed(), Some(7));
            assert_eq!(n.next_deadline(), None);
        }
        // A completed member answers a straggler's message with Decided.
        assert_eq!(
            recv(&mut n3, 2, GmpMsg::Ack { id: 7, round: 1 }),
            vec![send(
                2,
                GmpMsg::Decided { id: 7, round: 1, failed: set(&[]), data: [(0, 101), (1, 103)].into_iter().collect() }
            )]
        );
    }

    /// Subgroup {1, 2}: leader 1 fails before its data reached 2 (flag
    /// clear): 2 becomes leader and sends its OWN data for subgroup 0.
    #[test]
    fn leader_fails_before_sending_next_sends_own_data() {
        let members = set(&[1, 2, 3]);
        let mut n2 = node(2, 2);
        recv(&mut n2, 1, GmpMsg::Request { id: 1, members: members.clone() });
        n2.handle(T0, GmpInput::LocalData { id: 1, my_data: 102 });
        assert_eq!(drain(&mut n2), vec![]);
        n2.handle(T0, GmpInput::MemberFailed { node: 1 });
        assert_eq!(
            drain(&mut n2),
            vec![
                send(3, GmpMsg::Failed { id: 1, failed: set(&[1]) }),
                send(3, GmpMsg::Data { id: 1, subgroup: 0, data: 102 }),
            ]
        );
        // Node 3 (F = {1} too, sent to its leader: itself... it broadcasts).
        let mut n3 = node(3, 2);
        recv(&mut n3, 1, GmpMsg::Request { id: 1, members: members.clone() });
        n3.handle(T0, GmpInput::LocalData { id: 1, my_data: 103 });
        drain(&mut n3);
        n3.handle(T0, GmpInput::MemberFailed { node: 1 });
        assert_eq!(drain(&mut n3), vec![send(2, GmpMsg::Failed { id: 1, failed: set(&[1]) })]);
        // Round 2 now; n3 acks (self) when it has subgroup 0's data from 2.
        let out = recv(&mut n3, 2, GmpMsg::Data { id: 1, subgroup: 0, data: 102 });
        // SubgroupAcked only counts at 2 once 2 knows n3's failed set.
        assert_eq!(out, vec![send(2, GmpMsg::SubgroupAcked { id: 1, round: 2, subgroup: 1 })]);
        assert_eq!(recv(&mut n2, 3, GmpMsg::Data { id: 1, subgroup: 1, data: 103 }), vec![send(3, GmpMsg::SubgroupAcked { id: 1, round: 2, subgroup: 0 })]);
        assert_eq!(recv(&mut n2, 3, GmpMsg::SubgroupAcked { id: 1, round: 2, subgroup: 1 }), vec![]);
        let done = GmpAction::Complete {
            id: 1,
            members: set(&[2, 3]),
            data: [(0, 102), (1, 103)].into_iter().collect(),
            rounds: 2,
        };
        assert_eq!(recv(&mut n2, 3, GmpMsg::Failed { id: 1, failed: set(&[1]) }), vec![done.clone()]);
        assert_eq!(recv(&mut n3, 2, GmpMsg::Failed { id: 1, failed: set(&[1]) }), vec![]);
        assert_eq!(recv(&mut n3, 2, GmpMsg::SubgroupAcked { id: 1, round: 2, subgroup: 0 }), vec![done]);
    }

    /// Subgroup {1, 2}: 2 received 1's data (flag set), then 1 fails: 2
    /// sends the subgroup's data, i.e. 1's, not its own.
    #[test]
    fn leader_fails_after_sending_next_sends_subgroup_data() {
        let members = set(&[1, 2, 3]);
        let mut n2 = node(2, 2);
        recv(&mut n2, 1, GmpMsg::Request { id: 1, members: members.clone() });
        n2.handle(T0, GmpInput::LocalData { id: 1, my_data: 102 });
        recv(&mut n2, 1, GmpMsg::Data { id: 1, subgroup: 0, data: 101 });
        assert!(n2.ch.as_ref().unwrap().flag());
        n2.handle(T0, GmpInput::MemberFailed { node: 1 });
        assert_eq!(
            drain(&mut n2),
            vec![
                send(3, GmpMsg::Failed { id: 1, failed: set(&[1]) }),
                send(3, GmpMsg::Data { id: 1, subgroup: 0, data: 101 }),
            ]
        );
        // Failures of non-members, of itself, and repeated ones: nothing.
        n2.handle(T0, GmpInput::MemberFailed { node: 9 });
        n2.handle(T0, GmpInput::MemberFailed { node: 2 });
        n2.handle(T0, GmpInput::MemberFailed { node: 1 });
        assert_eq!(drain(&mut n2), vec![]);
        assert_eq!(n2.ch.as_ref().unwrap().round(), 2);
    }

    /// After a failure, a leader counts an Ack only once the member told it
    /// the same failed set (its Ack could mean "I have the data of every
    /// live subgroup" for a different set of live subgroups).
    #[test]
    fn acks_count_only_with_the_same_failed_set() {
        let mut n1 = node(1, 3);
        n1.handle(T0, GmpInput::Initiate { id: 1, members: set(&[1, 2, 3]), my_data: 101 });
        assert_eq!(drain(&mut n1).len(), 4);
        n1.handle(T0, GmpInput::MemberFailed { node: 3 });
        assert_eq!(drain(&mut n1), vec![send(2, GmpMsg::Failed { id: 1, failed: set(&[3]) })]);
        // 2 acks round 2 but its Failed{3} has not arrived: not counted; the
        // leader tells it its failed set.
        assert_eq!(
            recv(&mut n1, 2, GmpMsg::Ack { id: 1, round: 2 }),
            vec![send(2, GmpMsg::Failed { id: 1, failed: set(&[3]) })]
        );
        // An Ack of an old round: the sender is behind.
        assert_eq!(
            recv(&mut n1, 2, GmpMsg::Ack { id: 1, round: 1 }),
            vec![send(2, GmpMsg::Failed { id: 1, failed: set(&[3]) })]
        );
        assert_eq!(
            recv(&mut n1, 2, GmpMsg::Failed { id: 1, failed: set(&[3]) }),
            vec![
                send(2, GmpMsg::SubgroupAcked { id: 1, round: 2, subgroup: 0 }),
                GmpAction::Complete { id: 1, members: set(&[1, 2]), data: [(0, 101)].into_iter().collect(), rounds: 2 },
            ]
        );
    }

    /// Decided is adopted, but not from a member known to have failed.
    #[test]
    fn decided_is_adopted_unless_its_sender_failed() {
        let mut n2 = node(2, 1);
        recv(&mut n2, 1, GmpMsg::Request { id: 4, members: set(&[1, 2, 3]) });
        n2.handle(T0, GmpInput::LocalData { id: 4, my_data: 102 });
        drain(&mut n2);
        n2.handle(T0, GmpInput::MemberFailed { node: 3 });
        drain(&mut n2);
        let data: BTreeMap<u32, u64> = [(0, 101), (1, 102), (2, 103)].into_iter().collect();
        let decided = GmpMsg::Decided { id: 4, round: 1, failed: set(&[]), data: data.clone() };
        assert_eq!(recv(&mut n2, 3, decided.clone()), vec![]);
        assert_eq!(n2.current(), Some(4));
        assert_eq!(
            recv(&mut n2, 1, decided),
            vec![GmpAction::Complete { id: 4, members: set(&[1, 2, 3]), data, rounds: 1 }]
        );
        assert_eq!(n2.current(), None);
        assert_eq!(n2.next_deadline(), None);
    }

    #[test]
    fn early_messages_are_buffered_until_the_request() {
        let members = set(&[1, 2, 3]);
        let mut n3 = node(3, 2);
        n3.handle(T0, GmpInput::Initiate { id: 1, members: members.clone(), my_data: 3 });
        drain(&mut n3);
        // Data and SubgroupAcked of change 2 before its Request.
        assert_eq!(recv(&mut n3, 1, GmpMsg::Data { id: 2, subgroup: 0, data: 101 }), vec![]);
        assert_eq!(recv(&mut n3, 1, GmpMsg::SubgroupAcked { id: 2, round: 1, subgroup: 0 }), vec![]);
        assert_eq!(n3.current(), Some(1));
        // The Request of change 2 supersedes change 1 and replays them.
        let out = recv(&mut n3, 1, GmpMsg::Request { id: 2, members: members.clone() });
        assert_eq!(out, vec![GmpAction::NeedData { id: 2 }]);
        assert_eq!(n3.current(), Some(2));
        n3.handle(T0, GmpInput::LocalData { id: 2, my_data: 103 });
        let data1 = GmpMsg::Data { id: 2, subgroup: 1, data: 103 };
        let sga1 = GmpMsg::SubgroupAcked { id: 2, round: 1, subgroup: 1 };
        assert_eq!(
            drain(&mut n3),
            vec![
                send(1, data1.clone()),
                send(2, data1),
                send(1, sga1.clone()),
                send(2, sga1),
                GmpAction::Complete {
                    id: 2,
                    members: members.clone(),
                    data: [(0, 101), (1, 103)].into_iter().collect(),
                    rounds: 1
                },
            ]
        );
        // Old change's messages are ignored.
        assert_eq!(recv(&mut n3, 1, GmpMsg::Ack { id: 1, round: 1 }), vec![]);
        // An older Initiate is ignored too.
        n3.handle(T0, GmpInput::Initiate { id: 1, members, my_data: 3 });
        assert_eq!(drain(&mut n3), vec![]);
    }

    #[test]
    fn failure_before_request_is_applied_to_it() {
        let members = set(&[1, 2, 3]);
        let mut n3 = node(3, 1);
        n3.handle(T0, GmpInput::MemberFailed { node: 2 });
        assert_eq!(recv(&mut n3, 1, GmpMsg::Request { id: 5, members }), vec![
            GmpAction::NeedData { id: 5 },
            send(1, GmpMsg::Failed { id: 5, failed: set(&[2]) }),
        ]);
        assert_eq!(n3.ch.as_ref().unwrap().round(), 2);
    }

    #[test]
    fn retransmits_on_tick() {
        let members = set(&[1, 2, 3]);
        let mut n1 = node(1, 2);
        n1.handle(T0, GmpInput::Initiate { id: 1, members, my_data: 101 });
        assert_eq!(drain(&mut n1).len(), 4);
        let d = n1.next_deadline().unwrap();
        assert_eq!(d, Instant(20_000_000));
        n1.handle(Instant(d.0 - 1), GmpInput::Tick);
        assert_eq!(drain(&mut n1), vec![]);
        n1.handle(d, GmpInput::Tick);
        // Request to the members not heard from, Data to those not known to
        // hold it.
        assert_eq!(
            drain(&mut n1),
            vec![
                send(2, GmpMsg::Request { id: 1, members: set(&[1, 2, 3]) }),
                send(3, GmpMsg::Request { id: 1, members: set(&[1, 2, 3]) }),
                send(2, GmpMsg::Data { id: 1, subgroup: 0, data: 101 }),
                send(3, GmpMsg::Data { id: 1, subgroup: 0, data: 101 }),
            ]
        );
        assert_eq!(n1.next_deadline(), Some(Instant(40_000_000)));
        // 3's Data: 3 has the request now; only 2 is asked again, once a
        // whole period passed without news (a period with news resends nothing).
        recv(&mut n1, 3, GmpMsg::Data { id: 1, subgroup: 1, data: 103 });
        n1.handle(Instant(40_000_000), GmpInput::Tick);
        assert_eq!(drain(&mut n1), vec![]);
        assert_eq!(n1.next_deadline(), Some(Instant(60_000_000)));
        n1.handle(Instant(60_000_000), GmpInput::Tick);
        assert_eq!(
            drain(&mut n1),
            vec![
                send(2, GmpMsg::Request { id: 1, members: set(&[1, 2, 3]) }),
                send(2, GmpMsg::Data { id: 1, subgroup: 0, data: 101 }),
                send(3, GmpMsg::Data { id: 1, subgroup: 0, data: 101 }),
                // 1 acked itself and misses subgroup 1's SubgroupAcked.
                send(3, GmpMsg::Ack { id: 1, round: 1 }),
            ]
        );
    }

    // ----- a small deterministic network -----

    enum Ev {
        Msg { from: NodeId, to: NodeId, msg: GmpMsg<u64> },
        Failed { to: NodeId, node: NodeId },
        Crash { node: NodeId },
        Tick { to: NodeId },
    }

    struct SimCfg {
        n: usize,
        k: usize,
        loss: f64,
        dup: f64,
        delay_ms: (u64, u64),
        max_failures: usize,
        /// Crashes happen at a random time before this.
        crash_before_ms: u64,
        /// The failure detector tells each survivor after this long.
        fd_delay_ms: (u64, u64),
        retransmit_ms: u64,
    }

    /// A Complete's (members, data, rounds).
    type Result = (BTreeSet<NodeId>, BTreeMap<u32, u64>, u32);

    #[derive(Debug)]
    struct Outcome {
        ids: Vec<NodeId>,
        groups: Vec<BTreeSet<NodeId>>,
        crashed: BTreeSet<NodeId>,
        /// Nodes that got the request (started the change).
        started: BTreeSet<NodeId>,
        done: BTreeMap<NodeId, Result>,
        messages: u64,
    }

    fn my_data(id: NodeId) -> u64 {
        1000 + id as u64
    }

    fn run(seed: u64, c: &SimCfg) -> Outcome {
        let mut rng = Rng::new(seed);
        // Not contiguous, so sorting matters.
        let ids: Vec<NodeId> = (0..c.n as u32).map(|i| 10 + 7 * i).collect();
        let members: BTreeSet<NodeId> = ids.iter().copied().collect();
        let mut nodes: BTreeMap<NodeId, G> = ids
            .iter()
            .map(|&me| {
                (me, Gmp::new(GmpConfig { me, subgroup_size: c.k, retransmit_ns: c.retransmit_ms * 1_000_000 }))
            })
            .collect();
        let mut q: BTreeMap<(u64, u64), Ev> = BTreeMap::new();
        let mut seq = 0u64;
        let mut push = |q: &mut BTreeMap<(u64, u64), Ev>, t: u64, ev: Ev| {
            seq += 1;
            q.insert((t, seq), ev);
        };
        let mut crashed = BTreeSet::new();
        let mut started = BTreeSet::new();
        let mut done = BTreeMap::new();
        let mut ticks: BTreeMap<NodeId, u64> = BTreeMap::new();

        let initiator = ids[rng.below(c.n as u64) as usize];
        let nf = if c.max_failures == 0 { 0 } else { rng.range(1, c.max_failures as u64) as usize };
        let mut victims = BTreeSet::new();
        while victims.len() < nf {
            victims.insert(ids[rng.below(c.n as u64) as usize]);
        }
        for &v in &victims {
            let t = rng.range(0, c.crash_before_ms) * 1_000_000 + rng.below(1_000_000);
            push(&mut q, t, Ev::Crash { node: v });
        }

        let mut inputs: Vec<(NodeId, GmpInput<u64>)> =
            vec![(initiator, GmpInput::Initiate { id: 1, members: members.clone(), my_data: my_data(initiator) })];
        let mut now = 0u64;
        let limit = 30_000_000_000u64;
        loop {
            // Feed the inputs of this instant, draining actions.
            while let Some((to, input)) = inputs.pop() {
                if crashed.contains(&to) {
                    continue;
                }
                let g = nodes.get_mut(&to).unwrap();
                g.handle(Instant(now), input);
                if g.current() == Some(1) || g.last_completed() == Some(1) {
                    started.insert(to);
                }
                while let Some(a) = g.poll_action() {
                    match a {
                        GmpAction::Send { to: dst, msg } => {
                            assert_ne!(dst, to, "seed {seed}: sends to itself");
                            let copies = if rng.chance(c.loss) {
                                0
                            } else if rng.chance(c.dup) {
                                2
                            } else {
                                1
                            };
                            for _ in 0..copies {
                                let d = rng.range(c.delay_ms.0 * 1000, c.delay_ms.1 * 1000) * 1000;
                                push(&mut q, now + d, Ev::Msg { from: to, to: dst, msg: msg.clone() });
                            }
                        }
                        GmpAction::NeedData { id } => {
                            assert_eq!(id, 1);
                            inputs.push((to, GmpInput::LocalData { id, my_data: my_data(to) }));
                        }
                        GmpAction::Complete { id, members, data, rounds } => {
                            assert_eq!(id, 1, "seed {seed}");
                            let prev = done.insert(to, (members, data, rounds));
                            assert!(prev.is_none(), "seed {seed}: node {to} completed twice");
                        }
                    }
                }
                if let Some(d) = g.next_deadline() {
                    let d = d.0.max(now);
                    if ticks.get(&to) != Some(&d) {
                        ticks.insert(to, d);
                        push(&mut q, d, Ev::Tick { to });
                    }
                }
            }
            let Some(((t, _), ev)) = q.pop_first() else { break };
            if t > limit {
                break;
            }
            now = t;
            match ev {
                Ev::Msg { from, to, msg } => inputs.push((to, GmpInput::Receive { from, msg })),
                Ev::Failed { to, node } => inputs.push((to, GmpInput::MemberFailed { node })),
                Ev::Tick { to } => {
                    if ticks.get(&to) == Some(&t) {
                        ticks.remove(&to);
                    }
                    inputs.push((to, GmpInput::Tick));
                }
                Ev::Crash { node } => {
                    crashed.insert(node);
                    for &s in &ids {
                        if s != node {
                            let d = rng.range(c.fd_delay_ms.0 * 1000, c.fd_delay_ms.1 * 1000) * 1000;
                            push(&mut q, now + d, Ev::Failed { to: s, node });
                        }
                    }
                }
            }
        }
        if std::env::var("GMP_DUMP").is_ok() {
            for (id, g) in &nodes {
                if !crashed.contains(id) {
                    eprintln!("node {id}: {:#?}", g.ch);
                }
            }
        }
        let messages = nodes.values().map(|g| g.messages_sent()).sum();
        Outcome { groups: subgroups(&members, c.k), ids, crashed, started, done, messages }
    }

    /// Checks one run; returns the rounds of the result (0 if nobody got
    /// the request).
    fn check(seed: u64, c: &SimCfg, o: &Outcome) -> u32 {
        let ctx = format!("seed {seed}, n {}, k {}, crashed {:?}", c.n, c.k, o.crashed);
        let survivors: Vec<NodeId> = o.ids.iter().copied().filter(|i| !o.crashed.contains(i)).collect();
        if !survivors.iter().any(|s| o.started.contains(s)) {
            // The initiator crashed before any Request got through.
            assert!(o.crashed.iter().any(|c| o.started.contains(c)), "{ctx}: nobody started");
            return 0;
        }
        for s in &survivors {
            assert!(o.done.contains_key(s), "{ctx}: survivor {s} did not complete; done: {:?}", o.done.keys());
        }
        let (members, data, rounds) = &o.done[&survivors[0]];
        for s in &survivors {
            assert_eq!(&o.done[s], &o.done[&survivors[0]], "{ctx}: {s} and {} differ", survivors[0]);
        }
        // A crashed member that completed before crashing saw the same too,
        // unless it completed and then the others moved on without it:
        // only the survivors must agree.
        for s in &survivors {
            assert!(members.contains(s), "{ctx}: survivor {s} not in {members:?}");
        }
        let failed = o.ids.len() - members.len();
        assert_eq!(*rounds as usize, 1 + failed, "{ctx}");
        for (g, grp) in o.groups.iter().enumerate() {
            let live = grp.iter().any(|m| members.contains(m));
            match data.get(&(g as u32)) {
                Some(d) => {
                    assert!(live, "{ctx}: data for dead subgroup {g}");
                    assert!(grp.iter().any(|&m| my_data(m) == *d), "{ctx}: subgroup {g} data {d} not from it");
                }
                None => assert!(!live, "{ctx}: no data for subgroup {g}"),
            }
        }
        if o.crashed.is_empty() {
            assert_eq!(members.len(), o.ids.len(), "{ctx}");
            for (g, grp) in o.groups.iter().enumerate() {
                assert_eq!(data[&(g as u32)], my_data(*grp.first().unwrap()), "{ctx}");
            }
        }
        *rounds
    }

    #[test]
    #[ignore]
    fn debug_one() {
        let seed: u64 = std::env::var("SEED").unwrap().parse().unwrap();
        let n: usize = std::env::var("N").unwrap().parse().unwrap();
        let k: usize = std::env::var("K").unwrap().parse().unwrap();
        let c = if std::env::var("STRESS").is_ok() {
            stress_cfg(seed, n, k)
        } else {
            SimCfg { n, k, loss: 0.1, dup: 0.05, delay_ms: (1, 10), max_failures: if n == 3 { 1 } else { 3 }, crash_before_ms: 25, fd_delay_ms: (2, 30), retransmit_ms: 20 }
        };
        let o = run(seed, &c);
        check(seed, &c, &o);
    }

    fn stress_cfg(seed: u64, n: usize, k: usize) -> SimCfg {
        let mut r = Rng::new(seed ^ 0x5eed);
        SimCfg {
            n,
            k,
            loss: [0.0, 0.05, 0.2, 0.4][r.below(4) as usize],
            dup: [0.0, 0.1][r.below(2) as usize],
            delay_ms: (1, r.range(2, 30)),
            max_failures: (n - 1).min(r.below(5) as usize),
            crash_before_ms: r.range(1, 80),
            fd_delay_ms: [(2, 30), (1, 3), (1, 100)][r.below(3) as usize],
            retransmit_ms: r.range(5, 40),
        }
    }

    /// Many more seeds and shapes: `cargo test -p baton-core --release gmp_stress -- --ignored`.
    #[test]
    #[ignore]
    fn gmp_stress() {
        let seeds: u64 = std::env::var("SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
        let mut hist: BTreeMap<u32, u64> = BTreeMap::new();
        for &n in &[2usize, 3, 5, 8, 13, 16, 32] {
            for &k in &[1usize, 2, 3, 4, 8] {
                for seed in 0..seeds {
                    let c = stress_cfg(seed, n, k);
                    let o = run(seed, &c);
                    *hist.entry(check(seed, &c, &o)).or_default() += 1;
                }
            }
        }
        eprintln!("rounds histogram: {hist:?}");
    }

    #[test]
    fn random_networks_no_failures() {
        for &n in &[3usize, 8, 16, 32] {
            for &k in &[1usize, 4] {
                let seeds = if n == 32 { 20 } else { 60 };
                for seed in 0..seeds {
                    let c = SimCfg {
                        n,
                        k,
                        loss: 0.1,
                        dup: 0.05,
                        delay_ms: (1, 10),
                        max_failures: 0,
                        crash_before_ms: 0,
                        fd_delay_ms: (2, 30),
                        retransmit_ms: 20,
                    };
                    let o = run(seed, &c);
                    assert_eq!(check(seed, &c, &o), 1, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn random_networks_with_failures() {
        for &n in &[3usize, 8, 16, 32] {
            for &k in &[1usize, 4] {
                let seeds = if n == 32 { 40 } else { 150 };
                let mut hit = 0;
                for seed in 0..seeds {
                    let seed = seed + 1000 * n as u64 + k as u64;
                    let c = SimCfg {
                        n,
                        k,
                        loss: 0.1,
                        dup: 0.05,
                        delay_ms: (1, 10),
                        max_failures: if n == 3 { 1 } else { 3 },
                        crash_before_ms: 25,
                        fd_delay_ms: (2, 30),
                        retransmit_ms: 20,
                    };
                    let o = run(seed, &c);
                    if check(seed, &c, &o) > 1 {
                        hit += 1;
                    }
                }
                assert!(hit > seeds / 4, "n {n} k {k}: only {hit} runs used more than one round");
            }
        }
    }

    fn count(n: usize, k: usize) -> u64 {
        let c = SimCfg { n, k, loss: 0.0, dup: 0.0, delay_ms: (1, 5), max_failures: 0, crash_before_ms: 0, fd_delay_ms: (2, 30), retransmit_ms: 1000 };
        let o = run(7, &c);
        assert_eq!(check(7, &c, &o), 1);
        o.messages
    }

    #[test]
    fn message_counts() {
        let formula = |n: u64, k: u64| {
            let s = n.div_ceil(k);
            (n - 1) * (2 * s + 1) + n - s
        };
        for &n in &[3usize, 8, 16, 32] {
            for &k in &[1usize, 4, 8] {
                let got = count(n, k);
                eprintln!("N = {n:2}, k = {k}: {got} messages");
                assert_eq!(got, formula(n as u64, k as u64), "n {n} k {k}");
            }
        }
        let (c1, c4, c8) = (count(32, 1), count(32, 4), count(32, 8));
        assert!((c4 as f64) < 0.4 * c1 as f64, "k=4: {c4}, k=1: {c1}");
        // Fixed N: the count is linear in the number of subgroups. S = 8
        // vs S = 4: the S-dependent part exactly doubles; the whole count
        // (with the S-independent Requests and Acks) almost does.
        let ratio = c4 as f64 / c8 as f64;
        assert!((1.6..2.1).contains(&ratio), "S=8 / S=4 ratio {ratio}");
        let fixed = 31 + 32; // Requests + N
        assert_eq!((c4 - fixed + 8) as f64 / (c8 - fixed + 4) as f64, 2.0);
    }
}
