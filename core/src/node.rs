//! One node of the cluster, composed: the membership core, the services
//! core and the fencing core joined by the rules that used to live in the
//! agent's I/O shell (`agent/src/daemon/cluster.rs`, `agent/src/services/svc.rs`). Like
//! every core here it is sans-IO and deterministic; the agent
//! (`ClusterDriver`) is its driver and only carries out what it asks for.
//!
//! # The map
//!
//! **Inputs** ([`Node::handle`] with a [`NodeInput`], [`Node::handle_timeout`]):
//! - `Membership(..)`: datapath events (`PeerUp`, `PeerSilent`,
//!   `PeerDistress`), control-channel messages, external subsystems'
//!   registrations and acknowledgements, `Start` / `Leave` / `StopAll`,
//!   local failures;
//! - `Services(..)`: results of action functions, monitor failures, the load
//!   figure, services messages, operator requests;
//! - `Fencing(..)`: outcomes of fencing operations on the shared disks,
//!   operators' and peers' confirmations;
//! - [`Node::handle_timeout`]: a `Tick` to each core, in the order
//!   membership, services, fencing.
//!
//! **Outputs** ([`Node::poll`], in the order they were made, so that what
//! one decision asks for is carried out before what a later one asks for):
//! - [`NodeAction::Membership`]: messages to send, notifications of
//!   *external* subsystems, distress, termination of external subsystems,
//!   halt, left, and the events (state changed, transition completed, peer
//!   failed or gone, stop requested);
//! - [`NodeAction::LevelStep`]: a step of a built-in level reached this node
//!   (acknowledged here at once, handed to the fencing core, or held until
//!   the node's services are drained: see below);
//! - [`NodeAction::LeaveReleased`]: a held graceful leave goes on;
//! - [`NodeAction::LeaseWait`] / [`NodeAction::LeaseWaited`]: an addresses
//!   step of a forced leave is held for the old owner's lease (rule 8), and
//!   was acknowledged (for logs and the events file);
//! - [`NodeAction::Services`]: the services core's actions (every one but
//!   `Drained`, which is consumed here);
//! - [`NodeAction::Fencing`]: the fencing core's actions (`Ack` and `Fenced`
//!   are also acted on here; the driver logs them and runs `Run`).
//!
//! **Timers** ([`Node::poll_timeout`]): the minimum of a table indexed by
//! [`Timer`] (each core's own next deadline); none once halted.
//!
//! # The composition rules (each has a unit test below)
//! 1. The built-in levels are typed ([`LevelRole`]) and registered by the
//!    node itself, lowest first: fencing, storage, addresses, services.
//! 2. A step of the **services** level: a forced leave feeds `NodeFailed` to
//!    the services core and is acknowledged at once (recovery runs off the
//!    critical path); a graceful leave feeds `NodeLeaving` and is held until
//!    the services core says the node is `Drained`; a join is acknowledged
//!    at once. Without resource groups, every step is acknowledged at once.
//! 3. A step of the **fencing** level goes to the fencing core, which
//!    acknowledges it (at once, or once the victim is fenced); its `Fenced`
//!    (this node's key is gone) becomes a local failure reported by the
//!    fencing level. Without shared disks, every step is acknowledged at once.
//! 4. Storage and addresses have nothing of their own to do: acknowledged
//!    at once. Notifications of external subsystems go to the driver.
//! 5. After every change of the cluster state, the services core gets the
//!    view: members are the Joined and Leaving nodes (but not a node whose
//!    join was reversed into a leave before it reached the services level:
//!    its leave never passes that level) and the forced-out
//!    lives not fed as `NodeFailed` yet (but not one whose forced leave
//!    never passes the services level: it never was a member); graceful leaves that finished are
//!    fed as `NodeLeft` (a graceful leave turned into a forced leave has not
//!    finished: it is fed as `NodeFailed` at its services step); the decider is the master, or the lowest member
//!    when the master is no longer one; an unchanged view is not fed again.
//! 6. A state that belongs to an **earlier life** of this node (its own
//!    entry, or the master, is an earlier incarnation of it), or in which
//!    this node is no member, is not fed to the services core.
//! 7. After a halt, nothing is fed to any core and no timer runs.
//! 8. **The address lease of a forced-out life** ([`Node::set_lease_wait`]):
//!    a step of the **addresses** level of a forced leave is acknowledged
//!    only once that life's address lease (agent/src/services/lease.rs) can no
//!    longer count this node: at once when this node's datapath reported
//!    the node silent and has not heard it since, otherwise when the lease
//!    wait (`interval × (misses + 1)` in the agent) has passed since the
//!    step reached this node (the node was disowned before: it was already
//!    `ForcedLeaving` in the state this node follows), or earlier if its
//!    silence is reported meanwhile. The services level, where the new
//!    owner is chosen and configures the address, starts only when every
//!    participant acknowledged the addresses level, so the old owner has
//!    let go of its addresses before (docs/addresses.md, "Waiting out the
//!    lease of a node forced out while reachable").
//!
//! Takeover (the negotiated takeover, `baton_core::takeover`) is still
//! driven by the agent beside this node; its slot here is [`Node::takeover`]
//! (reserved, always `None` for now) so that its rules can move in next.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::fencing::{self, Fencing};
use crate::membership::{self, ClusterState, Kind, LevelSpec, Membership, NodeState, Step, SubsystemId, TransitionId};
use crate::services::{self, Services};
use crate::{Instant, NodeId};

/// What a built-in level is for. The agent's own parts register as these
/// levels; the node decides by role (not by name) what a step of each does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LevelRole {
    /// SCSI-3 PR fencing of the shared disks (docs/fencing.md).
    Fencing,
    /// Storage takeover (nothing of its own yet).
    Storage,
    /// Address takeover (the addresses move with the resource groups).
    Addresses,
    /// The resource groups (the services core).
    Services,
}

impl LevelRole {
    /// Every role, lowest level first.
    pub const ALL: [LevelRole; 4] = [LevelRole::Fencing, LevelRole::Storage, LevelRole::Addresses, LevelRole::Services];

    /// The level it registers at: fencing must be done before storage is
    /// taken over, storage before addresses, addresses before services.
    pub fn level(self) -> u32 {
        match self {
            LevelRole::Fencing => 10,
            LevelRole::Storage => 20,
            LevelRole::Addresses => 30,
            LevelRole::Services => 40,
        }
    }

    /// Its subsystem id (1..=4; external subsystems start at
    /// [`FIRST_EXTERNAL_SUBSYSTEM`]).
    pub fn subsystem(self) -> SubsystemId {
        match self {
            LevelRole::Fencing => 1,
            LevelRole::Storage => 2,
            LevelRole::Addresses => 3,
            LevelRole::Services => 4,
        }
    }

    /// The name in logs and `cluster.json`.
    pub fn name(self) -> &'static str {
        match self {
            LevelRole::Fencing => "fencing",
            LevelRole::Storage => "storage",
            LevelRole::Addresses => "addresses",
            LevelRole::Services => "services",
        }
    }

    /// The built-in level registered as `subsystem`, if it is one.
    pub fn of_subsystem(subsystem: SubsystemId) -> Option<LevelRole> {
        LevelRole::ALL.into_iter().find(|r| r.subsystem() == subsystem)
    }
}

/// Ids of external subsystems (over the agent's Unix socket) start here.
pub const FIRST_EXTERNAL_SUBSYSTEM: SubsystemId = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeInput {
    Membership(membership::Input),
    Services(services::Input),
    Fencing(fencing::Input),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeAction {
    /// A membership action for the driver. `Notify` and `Terminate` come
    /// only for external subsystems (the built-in levels are handled here).
    Membership(membership::Action),
    /// A step of a built-in level reached this node. `held`: a graceful
    /// leave at the services level, held until the node is drained
    /// ([`NodeAction::LeaveReleased`]), or a forced leave at the addresses
    /// level, held for the lease (rule 8, [`NodeAction::LeaseWait`]);
    /// otherwise acknowledged here (or, at
    /// the fencing level with shared disks, handed to the fencing core).
    LevelStep { role: LevelRole, id: TransitionId, step: Step, held: bool },
    /// The services of `node` are drained: its held graceful leave was
    /// acknowledged and goes on.
    LeaveReleased { node: NodeId },
    /// Rule 8: the addresses step of the forced leave `id` is held until
    /// the forced-out life's address lease surely ended here: until
    /// `until` at the latest (its silence reported here ends it earlier).
    LeaseWait { id: TransitionId, until: Instant },
    /// Rule 8: that step was acknowledged after `waited_ns`; `silent`: this
    /// node's datapath reported the node silent (rather than the wait
    /// running out).
    LeaseWaited { id: TransitionId, waited_ns: u64, silent: bool },
    /// A services action to carry out (every one but `Drained`).
    Services(services::Action),
    /// A fencing action. `Run` is for the driver to carry out; the others
    /// are reports (`Ack` and `Fenced` were acted on here already). `ours`:
    /// the input that led to it was this node's own fencing operation.
    Fencing { action: fencing::Action, ours: bool },
}

/// The node's timers, one per core ([`Node::poll_timeout`] is their minimum).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    Membership = 0,
    Services = 1,
    Fencing = 2,
    /// Rule 8: the end of the earliest held addresses step's lease wait.
    LeaseWait = 3,
}

impl Timer {
    pub const ALL: [Timer; 4] = [Timer::Membership, Timer::Services, Timer::Fencing, Timer::LeaseWait];
}

/// The fencing slot: the fencing core and the distress reason its
/// self-fencing is reported with (`baton_common::DISTRESS_FENCED` in the
/// agent).
pub struct FencingSlot {
    pub core: Fencing,
    pub distress_reason: u32,
}

/// How membership progress is fed to the services core (rules 2, 5, 6).
struct ServicesSlot {
    core: Services,
    /// Forced-out lives already fed as `NodeFailed`: (node, incarnation).
    failed_fed: BTreeSet<(NodeId, u64)>,
    /// Nodes fed as `NodeLeaving` whose leave is not finished.
    leaving: BTreeSet<NodeId>,
    /// The last view fed: (id, members, decider).
    last_view: Option<(u64, BTreeSet<NodeId>, NodeId)>,
    /// The last lives fed (`services::Input::Lives`).
    last_lives: BTreeMap<NodeId, services::Life>,
    /// `Drained` nodes not yet matched with a held leave.
    drained: Vec<NodeId>,
    /// Every node the core said is drained, while it is a member: the core
    /// says it once per leave, in answer to `NodeLeaving` (never before:
    /// an answer said before the notification, when the decider's registry
    /// came first, could be dropped here with a node not yet a member and
    /// held its leave for good, simulator seed 1074), so a notification
    /// normally finds it in `drained` already; kept as a safety net.
    drained_nodes: BTreeSet<NodeId>,
    /// Services-level graceful-leave steps held until the node is drained.
    held_leaves: BTreeMap<NodeId, (TransitionId, Step)>,
}

impl ServicesSlot {
    fn feed(&mut self, now: Instant, input: services::Input, out: &mut VecDeque<NodeAction>) {
        self.core.handle(now, input);
        self.drain(out);
    }

    fn drain(&mut self, out: &mut VecDeque<NodeAction>) {
        while let Some(a) = self.core.poll_action() {
            match a {
                services::Action::Drained { node } => {
                    self.drained_nodes.insert(node);
                    self.drained.push(node);
                }
                a => out.push_back(NodeAction::Services(a)),
            }
        }
    }

    /// Rules 5 and 6: membership progress becomes the services core's view.
    fn on_state(&mut self, now: Instant, me: NodeId, incarnation: u64, s: &ClusterState, out: &mut VecDeque<NodeAction>) {
        // Forget fed failures of lives that are gone from the state.
        self.failed_fed.retain(|(n, inc)| s.nodes.get(n).is_some_and(|e| e.incarnation == *inc && e.state == NodeState::ForcedLeaving));
        let members: BTreeSet<NodeId> = s
            .nodes
            .iter()
            .filter(|(n, e)| match e.state {
                NodeState::Joined => true,
                // A leaving node is a member until its services are
                // drained, unless its leave is a join reversed before it
                // reached the services level (S1.6): its leave never
                // passes that level, so it is never drained and must
                // never be given a service.
                NodeState::Leaving => s.transitions.get(n).is_none_or(|t| {
                    t.id.kind != Kind::Leave || t.path.iter().any(|l| l.level >= LevelRole::Services.level())
                }),
                // A forced-out life is a member until fed as `NodeFailed`
                // at its forced leave's services step; one whose forced
                // leave never passes that level (it walks only the levels
                // its join reached, or its reversed join walks) never was
                // a member, and is never fed as failed (seed 1327).
                NodeState::ForcedLeaving => {
                    !self.failed_fed.contains(&(**n, e.incarnation))
                        && s.transitions.get(n).is_none_or(|t| t.path.iter().any(|l| l.level >= LevelRole::Services.level()))
                }
                _ => false,
            })
            .map(|(n, _)| *n)
            .collect();
        // Graceful leaves that finished. A leave turned into a forced
        // leave (the node was taken for dead while it drained) has not:
        // its node may still run and still be stopping its groups, so it
        // stays a member until the forced leave reaches the services level
        // (fed as `NodeFailed`, after the levels below and the address
        // lease, rule 8). Fed as `NodeLeft` here, the decider restarted its
        // groups elsewhere at once (composed simulator, seeds 683, 696,
        // 1381, 1473).
        let finished: Vec<NodeId> =
            self.leaving.iter().copied().filter(|n| !matches!(s.state_of(*n), NodeState::Leaving | NodeState::ForcedLeaving)).collect();
        for n in finished {
            self.leaving.remove(&n);
            self.drained_nodes.remove(&n);
            self.feed(now, services::Input::NodeLeft { node: n }, out);
        }
        // A state in which this node's entry (or the master) is an earlier
        // life of this node is not ours to act on: a fast restart follows
        // such a state until its old life is forced out, and must neither
        // count itself a member nor, as that old master, decide anything.
        let this_life = s.nodes.get(&me).is_some_and(|e| e.incarnation == incarnation);
        let old_master = s.view.master == me && s.view.master_incarnation != incarnation;
        if !members.contains(&me) || !this_life || old_master {
            return;
        }
        // The lives, for the decider's check of requests (a request of an
        // earlier life, or of one being forced out, is dropped).
        let lives: BTreeMap<NodeId, services::Life> = s
            .nodes
            .iter()
            .map(|(n, e)| (*n, services::Life { incarnation: e.incarnation, forced_leaving: e.state == NodeState::ForcedLeaving }))
            .collect();
        if lives != self.last_lives {
            self.last_lives = lives.clone();
            self.feed(now, services::Input::Lives { lives }, out);
        }
        let id = (s.view.term << 32) | (s.view.version & 0xffff_ffff);
        // The services decider is a member: the master, or, while a master
        // whose own leave finished stays on to finish the others' (every
        // node leaving, `baton stop --all`), the lowest member, as every
        // node computes it from the same state.
        let master = if members.contains(&s.view.master) { s.view.master } else { *members.iter().next().expect("this node is a member") };
        let key = (id, members.clone(), master);
        if self.last_view.as_ref() == Some(&key) {
            return;
        }
        self.last_view = Some(key);
        self.drained_nodes.retain(|n| members.contains(n));
        self.feed(now, services::Input::View { id, members, master }, out);
    }

    /// Rule 2, forced leave: recover the node's services.
    fn node_failed(&mut self, now: Instant, me: NodeId, incarnation: u64, id: TransitionId, s: Option<&ClusterState>, out: &mut VecDeque<NodeAction>) {
        self.failed_fed.insert((id.node, id.incarnation));
        self.leaving.remove(&id.node);
        // A held graceful leave of that life is superseded.
        self.held_leaves.retain(|n, (l, _)| !(*n == id.node && l.incarnation <= id.incarnation));
        self.drained_nodes.remove(&id.node);
        self.feed(now, services::Input::NodeFailed { node: id.node }, out);
        if let Some(s) = s {
            self.last_view = None;
            self.on_state(now, me, incarnation, s, out);
        }
    }

    /// Rule 2, graceful leave: transfer the node's services; the step is
    /// held until it is drained.
    fn node_leaving(&mut self, now: Instant, node: NodeId, out: &mut VecDeque<NodeAction>) {
        self.leaving.insert(node);
        if self.drained_nodes.contains(&node) {
            self.drained.push(node);
        }
        self.feed(now, services::Input::NodeLeaving { node }, out);
    }
}

pub struct Node {
    me: NodeId,
    incarnation: u64,
    membership: Membership,
    services: Option<ServicesSlot>,
    /// Fencing of shared disks (None without `[[disk]]`: the fencing level
    /// then acknowledges at once).
    fencing: Option<FencingSlot>,
    /// Reserved for the negotiated takeover's core (still driven by the
    /// agent): always `None` for now.
    pub takeover: Option<std::convert::Infallible>,
    /// Rule 8: how long an addresses step of a forced leave waits when this
    /// node's datapath has not reported the node silent (0: not at all).
    lease_wait_ns: u64,
    /// Nodes this node's datapath reported silent (`PeerSilent`) and has not
    /// heard since (`PeerUp`).
    silent: BTreeSet<NodeId>,
    /// Rule 8: held addresses steps of forced leaves, with when each
    /// reached this node.
    lease_holds: Vec<(TransitionId, Step, Instant)>,
    halted: bool,
    out: VecDeque<NodeAction>,
}

impl Node {
    /// A node with its built-in levels registered (rule 1). `services`:
    /// the services core when resource groups are configured; `fencing`:
    /// the fencing core when shared disks are.
    pub fn new(now: Instant, cfg: membership::Config, services: Option<Services>, fencing: Option<FencingSlot>) -> Node {
        let (me, incarnation) = (cfg.me, cfg.incarnation);
        let mut membership = Membership::new(cfg);
        for role in LevelRole::ALL {
            membership.handle(now, membership::Input::Register { subsystem: role.subsystem(), spec: LevelSpec { level: role.level(), barriers: membership::Barriers::ONE } });
        }
        let services = services.map(|core| ServicesSlot {
            core,
            failed_fed: BTreeSet::new(),
            leaving: BTreeSet::new(),
            last_view: None,
            last_lives: BTreeMap::new(),
            drained: Vec::new(),
            drained_nodes: BTreeSet::new(),
            held_leaves: BTreeMap::new(),
        });
        let mut node = Node {
            me,
            incarnation,
            membership,
            services,
            fencing,
            takeover: None,
            lease_wait_ns: 0,
            silent: BTreeSet::new(),
            lease_holds: Vec::new(),
            halted: false,
            out: VecDeque::new(),
        };
        // Whatever the cores said while being set up (nothing today).
        node.drain_membership_quietly();
        node
    }

    fn drain_membership_quietly(&mut self) {
        while let Some(a) = self.membership.poll_action() {
            self.out.push_back(NodeAction::Membership(a));
        }
    }

    /// Rule 8: an addresses step of a forced leave waits up to `ns` for the
    /// forced-out life's address lease to end, unless this node's datapath
    /// reported that node silent (0, the default: no wait). The agent sets
    /// it to `interval × (misses + 1)`: the lease's silence bound and one
    /// interval for the old owner's lease thread to wake and remove the
    /// addresses.
    pub fn set_lease_wait(&mut self, ns: u64) {
        self.lease_wait_ns = ns;
    }

    /// Rule 8: the addresses steps held now, with the node each is about.
    pub fn lease_holds(&self) -> impl Iterator<Item = (TransitionId, Instant)> + '_ {
        self.lease_holds.iter().map(|(id, _, at)| (*id, *at))
    }

    pub fn me(&self) -> NodeId {
        self.me
    }
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// The services core (None without resource groups).
    pub fn services(&self) -> Option<&Services> {
        self.services.as_ref().map(|s| &s.core)
    }
    /// The fencing core (None without shared disks).
    pub fn fencing(&self) -> Option<&Fencing> {
        self.fencing.as_ref().map(|f| &f.core)
    }
    /// Clustering ended on this node (rule 7).
    pub fn is_halted(&self) -> bool {
        self.halted
    }

    /// The next action, in the order they were made.
    pub fn poll(&mut self) -> Option<NodeAction> {
        self.out.pop_front()
    }

    /// Each core's next deadline (the timer table).
    pub fn timers(&self) -> [Option<Instant>; 4] {
        let mut t = [None; 4];
        t[Timer::Membership as usize] = self.membership.next_deadline();
        t[Timer::LeaseWait as usize] = self.lease_holds.iter().map(|(_, _, at)| at.plus_ns(self.lease_wait_ns)).min();
        t[Timer::Services as usize] = self.services.as_ref().and_then(|s| s.core.next_deadline());
        t[Timer::Fencing as usize] = self.fencing.as_ref().and_then(|f| f.core.next_deadline());
        t
    }

    /// When [`Node::handle_timeout`] is next due: the earliest timer (none
    /// once halted).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.halted {
            return None;
        }
        self.timers().into_iter().flatten().min()
    }

    /// Time passed: a tick to each core (membership, services, fencing),
    /// after the lease waits that ran out (rule 8).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_lease_holds(now);
        self.handle(now, NodeInput::Membership(membership::Input::Tick));
        self.handle(now, NodeInput::Services(services::Input::Tick));
        self.handle(now, NodeInput::Fencing(fencing::Input::Tick));
    }

    /// A reload's resource groups: the services core's new set (nothing
    /// applied if it refuses them). Its actions follow through [`Node::poll`].
    pub fn reconfigure_services(&mut self, now: Instant, specs: Vec<services::ServiceSpec>) -> Result<(), services::SpecError> {
        if self.halted {
            return Ok(());
        }
        let Some(s) = self.services.as_mut() else { return Ok(()) };
        s.core.reconfigure(now, specs)?;
        s.drain(&mut self.out);
        self.services_follow(now, false);
        Ok(())
    }

    pub fn handle(&mut self, now: Instant, input: NodeInput) {
        if self.halted {
            return;
        }
        match input {
            NodeInput::Membership(i) => self.membership_input(now, i),
            NodeInput::Services(i) => {
                if let Some(s) = self.services.as_mut() {
                    s.feed(now, i, &mut self.out);
                    self.services_follow(now, false);
                }
            }
            NodeInput::Fencing(i) => self.fencing_input(now, i),
        }
    }

    fn membership_input(&mut self, now: Instant, input: membership::Input) {
        if self.halted {
            return;
        }
        let mut changed = matches!(input, membership::Input::Start);
        // Rule 8: what this node's datapath says of each peer.
        let silenced = match input {
            membership::Input::PeerSilent { node } => {
                self.silent.insert(node);
                Some(node)
            }
            membership::Input::PeerUp { node } => {
                self.silent.remove(&node);
                None
            }
            _ => None,
        };
        self.membership.handle(now, input);
        while let Some(a) = self.membership.poll_action() {
            match a {
                membership::Action::Notify { subsystem, id, step, states } => {
                    changed = true;
                    match LevelRole::of_subsystem(subsystem) {
                        Some(role) => self.builtin_step(now, role, id, step),
                        None => self.out.push_back(NodeAction::Membership(membership::Action::Notify { subsystem, id, step, states })),
                    }
                }
                membership::Action::Terminate { subsystem, .. } if LevelRole::of_subsystem(subsystem).is_some() => {}
                a => {
                    match &a {
                        membership::Action::Halt { .. } => {
                            self.halted = true;
                            changed = true;
                        }
                        membership::Action::Left | membership::Action::StateChanged { .. } => changed = true,
                        _ => {}
                    }
                    self.out.push_back(NodeAction::Membership(a));
                }
            }
        }
        if !self.halted {
            self.services_follow(now, changed);
        }
        if silenced.is_some() {
            self.release_lease_holds(now);
        }
    }

    /// Rule 8: acknowledges the held addresses steps whose node is silent
    /// here, or whose wait ran out.
    fn release_lease_holds(&mut self, now: Instant) {
        if self.halted || self.lease_holds.is_empty() {
            return;
        }
        let (due, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.lease_holds).into_iter().partition(|(id, _, at)| self.silent.contains(&id.node) || now >= at.plus_ns(self.lease_wait_ns));
        self.lease_holds = keep;
        for (id, step, at) in due {
            self.out.push_back(NodeAction::LeaseWaited { id, waited_ns: now.since(at), silent: self.silent.contains(&id.node) });
            self.membership_input(now, membership::Input::Ack { subsystem: LevelRole::Addresses.subsystem(), id, step });
        }
    }

    /// Rules 2–4: a step of a built-in level.
    fn builtin_step(&mut self, now: Instant, role: LevelRole, id: TransitionId, step: Step) {
        // Rule 8: the forced-out life may still hold its addresses by its
        // lease, kept alive by this node's heartbeats until it was disowned.
        let lease_wait = role == LevelRole::Addresses && id.kind == Kind::ForcedLeave && self.lease_wait_ns > 0 && !self.silent.contains(&id.node);
        let held = (role == LevelRole::Services && id.kind == Kind::Leave && self.services.is_some()) || lease_wait;
        self.out.push_back(NodeAction::LevelStep { role, id, step, held });
        if lease_wait {
            self.out.push_back(NodeAction::LeaseWait { id, until: now.plus_ns(self.lease_wait_ns) });
            self.lease_holds.push((id, step, now));
            return;
        }
        if role == LevelRole::Fencing {
            if let Some(f) = self.fencing.as_mut() {
                // The fencing core acknowledges (at once, or once the
                // victim is fenced).
                f.core.handle(now, fencing::Input::Step { id, step });
                for i in self.fencing_drain(false) {
                    self.membership.handle(now, i);
                }
                return;
            }
        }
        if role == LevelRole::Services {
            if let Some(s) = self.services.as_mut() {
                match id.kind {
                    Kind::ForcedLeave => s.node_failed(now, self.me, self.incarnation, id, self.membership.state(), &mut self.out),
                    Kind::Leave => {
                        s.held_leaves.insert(id.node, (id, step));
                        s.node_leaving(now, id.node, &mut self.out);
                        return;
                    }
                    Kind::Join => {}
                }
            }
        }
        self.membership.handle(now, membership::Input::Ack { subsystem: role.subsystem(), id, step });
    }

    /// After membership progress: the services core gets the view (when
    /// the state changed); then the held leaves of drained nodes go on.
    fn services_follow(&mut self, now: Instant, state_changed: bool) {
        let Some(s) = self.services.as_mut() else { return };
        if state_changed {
            if let Some(st) = self.membership.state() {
                s.on_state(now, self.me, self.incarnation, st, &mut self.out);
            }
        }
        let drained = std::mem::take(&mut s.drained);
        let acks: Vec<_> = drained.iter().filter_map(|n| s.held_leaves.remove(n)).collect();
        for (id, step) in acks {
            self.out.push_back(NodeAction::LeaveReleased { node: id.node });
            self.membership_input(now, membership::Input::Ack { subsystem: LevelRole::Services.subsystem(), id, step });
        }
    }

    fn fencing_input(&mut self, now: Instant, input: fencing::Input) {
        let Some(f) = self.fencing.as_mut() else { return };
        // A forced leave's fencing completed by our own operation is news
        // for the other survivors (the driver tells them).
        let ours = matches!(input, fencing::Input::Done { .. });
        f.core.handle(now, input);
        for i in self.fencing_drain(ours) {
            self.membership_input(now, i);
        }
    }

    /// Rule 3: the fencing core's actions out; returns the membership
    /// inputs they make (acknowledgements, a self-fencing).
    fn fencing_drain(&mut self, ours: bool) -> Vec<membership::Input> {
        let mut inputs = Vec::new();
        let Some(f) = self.fencing.as_mut() else { return inputs };
        let sid = LevelRole::Fencing.subsystem();
        while let Some(a) = f.core.poll_action() {
            match &a {
                fencing::Action::Ack { id, step } => inputs.push(membership::Input::Ack { subsystem: sid, id: *id, step: *step }),
                fencing::Action::Fenced { .. } => inputs.push(membership::Input::LocalFailure { from: Some(sid), reason: f.distress_reason }),
                _ => {}
            }
            self.out.push_back(NodeAction::Fencing { action: a, ours });
        }
        inputs
    }
}

#[cfg(test)]
mod tests;
