//! Configuration reload without a restart (SIGHUP, `baton reload`):
//! docs/reload.md.
//!
//! A reload reads the whole file again and checks it exactly as `baton run`
//! does at start (syntax, every key, the secret file, the resource groups'
//! agents on this machine). A file with any error is refused with that
//! error (`file:line: \`key\`: reason`) and the running configuration stays.
//! Only the `[[group]]` tables are applied at run time; any other change
//! (node id, links, peers, the cluster key, heartbeat, membership, disks,
//! health checks, ...) is refused, naming what changed, because it needs a
//! restart of the agent. The groups then go to the services core
//! ([`baton_core::services::Services::reconfigure`]) and the service
//! manager ([`crate::services::svc::ServiceManager::reload`]).
//!
//! Every node reloads its own file. To tell whether every node ended on the
//! same group configuration, each agent sends a hash of its groups (what
//! must agree cluster-wide: names, addresses, placement, preferences,
//! parents; not command lines or interface names, which may be local) to
//! every peer every [`HASH_EVERY`]; `baton status` shows it, and a
//! difference is logged, written as a `config_mismatch` event and shown by
//! `baton status` with the nodes that differ.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{Config, ConfigError};
use crate::config::groups::{Group, Handover};

/// The application topic of the control channel used here.
pub const TOPIC: &str = "config";
/// How often the groups' hash is sent to every peer.
pub const HASH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// A peer's hash older than this is not compared (the peer is gone).
pub const HASH_STALE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file has an error: nothing was applied.
    #[error("{source}")]
    Config {
        #[from]
        source: ConfigError,
    },
    /// A group cannot run on this machine (an OCF agent missing, ...).
    #[error("{file}: resource groups cannot run on this machine: {problems} (nothing was applied)")]
    Host { file: PathBuf, problems: String },
    /// A change that only a restart can apply.
    #[error("{file}: {what} changed: that needs a restart of the agent; nothing was applied (only [[group]] tables are reloaded)")]
    RestartNeeded { file: PathBuf, what: String },
    /// The services core refused the groups (not expected after the file's
    /// own validation).
    #[error("{file}: the resource groups were refused: {source} (nothing was applied)")]
    Groups {
        file: PathBuf,
        #[source]
        source: crate::services::svc::ServiceError,
    },
}

/// A message of the `config` topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// The sender's groups' hash.
    Hash { hash: String },
    /// `baton reload --all`: reload your own file too.
    Reload,
}

/// The groups' hash: FNV-1a (64 bits) over a canonical text of what every
/// node must agree on, groups by name.
pub fn groups_hash(groups: &[Group]) -> String {
    let mut sorted: Vec<&Group> = groups.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut text = String::new();
    for g in sorted {
        let mut addrs = g.addresses.clone();
        addrs.sort();
        text += &format!("{:?}|{:?}|{:?}\n", crate::services::svc::spec_of(g), addrs, g.handover);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// What differs between the running configuration and a new one that only a
/// restart can apply, as the key or section that changed (`None`: only
/// groups changed, or nothing).
/// `services_level`: the agent runs its services level (it started with
/// groups).
pub fn restart_reason(old: &Config, new: &Config, old_key: &[u8; 16], new_key: &[u8; 16], services_level: bool) -> Option<String> {
    let checks: Vec<(&str, bool)> = vec![
        ("`cluster.name`", old.cluster_name != new.cluster_name),
        ("`cluster.id`", old.cluster_id != new.cluster_id),
        ("`cluster.secret_file`", old.secret_file != new.secret_file),
        ("the cluster key (the contents of cluster.secret_file)", old_key != new_key),
        ("`node.id`", old.node_id != new.node_id),
        ("`node.name`", old.node_name != new.node_name),
        (
            "[heartbeat]",
            (old.interval_ms, old.misses, old.port, old.realtime_priority, old.watchdog_tick_us)
                != (new.interval_ms, new.misses, new.port, new.realtime_priority, new.watchdog_tick_us),
        ),
        ("[datapath]", old.xdp_mode != new.xdp_mode),
        (
            "[membership]",
            (old.subgroup_size, old.resend_ms, old.form_ms, old.control_port, old.rejoin_ms)
                != (new.subgroup_size, new.resend_ms, new.form_ms, new.control_port, new.rejoin_ms),
        ),
        ("[[link]]", old.links != new.links),
        ("[[peer]]", old.peers != new.peers),
        ("[paths]", old.paths != new.paths),
        ("[[disk]]", old.disks != new.disks),
        ("[[health]]", old.health != new.health),
        ("[takeover]", old.takeover != new.takeover),
        ("[[on]]", old.actions != new.actions),
        ("[alerts]", old.alerts != new.alerts),
        ("[metrics]", old.metrics != new.metrics),
        (
            "the first [[group]] (the agent started without groups, so its services level is not running)",
            !services_level && !new.groups.is_empty(),
        ),
        ("a group with `handover = \"overlap\"` (its datapath program is attached at start)", overlap_changed(&old.groups, &new.groups)),
        ("this node's takeover partner (derived from the groups' node lists; [[health]] checks use it)", partners_changed(old, new)),
    ];
    checks.into_iter().find(|(_, differs)| *differs).map(|(what, _)| what.to_string())
}

/// An overlap group added, removed or changed (or a group made overlap).
fn overlap_changed(old: &[Group], new: &[Group]) -> bool {
    let overlap = |gs: &[Group]| -> BTreeMap<String, Group> {
        gs.iter().filter(|g| g.handover == Handover::Overlap).map(|g| (g.name.clone(), g.clone())).collect()
    };
    overlap(old) != overlap(new)
}

/// With health checks (the negotiated takeover in use), this node's
/// partner, fixed at start, would change with the groups' node lists.
fn partners_changed(old: &Config, new: &Config) -> bool {
    !old.health.is_empty() && crate::services::takeover::partner_of(old, old.node_id) != crate::services::takeover::partner_of(new, old.node_id)
}

/// Reads and checks the file for a reload: the whole file as at start, the
/// secret file, the groups against this machine, and that only groups
/// changed. `running` is the configuration in use (with its current
/// groups), `key` the cluster key in use.
pub async fn prepare(running: &Config, key: &[u8; 16], services_level: bool) -> Result<Config, ReloadError> {
    let new = crate::config::load(&running.file)?;
    let new_key = crate::config::read_secret(&new.secret_file)?;
    if let Some(what) = restart_reason(running, &new, key, &new_key, services_level) {
        return Err(ReloadError::RestartNeeded { file: running.file.clone(), what });
    }
    let problems = crate::services::resource::check_host(&new.groups).await;
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        return Err(ReloadError::Host { file: running.file.clone(), problems: list.join("; ") });
    }
    Ok(new)
}

/// The reload state of the agent: the groups in use, their hash, the
/// peers' hashes, and the last reload's outcome.
pub struct Reloader {
    pub key: [u8; 16],
    /// The running configuration, with the groups in use.
    pub running: Config,
    pub hash: String,
    /// Peer -> (hash, when received, monotonic ns).
    pub peers: BTreeMap<u32, (String, u64)>,
    /// The last reload: (monotonic ns, ok, message).
    pub last: Option<(u64, bool, String)>,
    /// The peers whose hash differs, as last logged.
    logged_mismatch: Vec<u32>,
    last_sent_ns: u64,
}

impl Reloader {
    pub fn new(cfg: &Config, key: [u8; 16]) -> Reloader {
        Reloader {
            key,
            running: cfg.clone(),
            hash: groups_hash(&cfg.groups),
            peers: BTreeMap::new(),
            last: None,
            logged_mismatch: Vec::new(),
            last_sent_ns: 0,
        }
    }

    /// Peers whose recent hash differs from ours.
    pub fn mismatched(&self, now_ns: u64) -> Vec<u32> {
        self.peers
            .iter()
            .filter(|(_, (h, at))| now_ns.saturating_sub(*at) < HASH_STALE.as_nanos() as u64 && *h != self.hash)
            .map(|(n, _)| *n)
            .collect()
    }

    /// A peer's hash arrived. Returns the peers that differ when that set
    /// changed (to log once).
    pub fn peer_hash(&mut self, from: u32, hash: String, now_ns: u64) -> Option<Vec<u32>> {
        self.peers.insert(from, (hash, now_ns));
        self.check_mismatch(now_ns)
    }

    fn check_mismatch(&mut self, now_ns: u64) -> Option<Vec<u32>> {
        let m = self.mismatched(now_ns);
        if m != self.logged_mismatch {
            self.logged_mismatch = m.clone();
            return Some(m);
        }
        None
    }

    /// Peers whose hash went stale: returns the new set of differing peers
    /// when it changed.
    pub fn expire(&mut self, now_ns: u64) -> Option<Vec<u32>> {
        self.check_mismatch(now_ns)
    }

    /// Whether the hash is due to be sent again (every [`HASH_EVERY`], and at
    /// once after a reload).
    pub fn hash_due(&mut self, now_ns: u64) -> bool {
        if now_ns.saturating_sub(self.last_sent_ns) >= HASH_EVERY.as_nanos() as u64 {
            self.last_sent_ns = now_ns;
            return true;
        }
        false
    }

    /// A reload was applied.
    pub fn applied(&mut self, new: Config, now_ns: u64, message: String) -> Option<Vec<u32>> {
        self.hash = groups_hash(&new.groups);
        self.running = new;
        self.last = Some((now_ns, true, message));
        self.last_sent_ns = 0;
        self.check_mismatch(now_ns)
    }

    pub fn refused(&mut self, now_ns: u64, message: String) {
        self.last = Some((now_ns, false, message));
    }

    /// The `config` object of `baton status --json` (docs/status-json.md).
    pub fn status(&self, now_ns: u64) -> baton_state::ConfigStatus {
        let names = |n: u32| self.running.peer_name(n);
        let age_s = |at: u64| (now_ns.saturating_sub(at) as f64 / 1e8).round() / 10.0;
        baton_state::ConfigStatus {
            file: self.running.file.display().to_string(),
            groups: self.running.groups.iter().map(|g| g.name.clone()).collect(),
            groups_hash: self.hash.clone(),
            peers: self
                .peers
                .iter()
                .map(|(n, (h, at))| (n.to_string(), baton_state::PeerHash { name: names(*n), groups_hash: h.clone(), age_s: age_s(*at) }))
                .collect(),
            mismatch: self.mismatched(now_ns),
            last_reload: self.last.as_ref().map(|(at, ok, msg)| baton_state::LastReload { ok: *ok, message: msg.clone(), s_ago: age_s(*at) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
        [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\
        [[peer]]\nid = 2\nname = \"n2\"\naddresses = [\"10.0.0.2\"]\n\
        [[peer]]\nid = 3\nname = \"n3\"\naddresses = [\"10.0.0.3\"]\n";
    const WEB: &str = "[[group]]\nname = \"web\"\naddresses = [\"10.0.0.100/24\"]\nnodes = [1, 2, 3]\n\
        [group.application]\nkind = \"command\"\ndaemon = \"httpd -h /srv/n1\"\n";

    fn cfg(extra: &str) -> Config {
        crate::config::parse(Path::new("t.toml"), &format!("{BASE}{extra}")).unwrap()
    }

    #[test]
    fn only_group_changes_need_no_restart() {
        let k = [7u8; 16];
        let old = cfg(WEB);
        let new = cfg(&format!("{WEB}[[group]]\nname = \"db\"\nnodes = [1, 2, 3]\n"));
        assert_eq!(restart_reason(&old, &new, &k, &k, true), None);
        let new = cfg(&WEB.replace("[1, 2, 3]", "[2, 3, 1]"));
        assert_eq!(restart_reason(&old, &new, &k, &k, true), None);
        // Removing every group is fine (and adding them back); adding the
        // first to an agent that started without any is not.
        assert_eq!(restart_reason(&old, &cfg(""), &k, &k, true), None);
        assert_eq!(restart_reason(&cfg(""), &old, &k, &k, true), None);
        assert!(restart_reason(&cfg(""), &old, &k, &k, false).unwrap().contains("the first [[group]]"));
    }

    #[test]
    fn restart_only_changes_are_named() {
        let k = [7u8; 16];
        let old = cfg(WEB);
        let r = |text: String| restart_reason(&old, &crate::config::parse(Path::new("t.toml"), &text).unwrap(), &k, &k, true);
        let full = format!("{BASE}{WEB}");
        assert_eq!(r(full.replace("[node]\nid = 1", "[node]\nid = 4").replace("[1, 2, 3]", "[4, 2, 3]")).as_deref(), Some("`node.id`"));
        assert_eq!(r(full.replace("address = \"10.0.0.1\"", "address = \"10.0.0.9\"")).as_deref(), Some("[[link]]"));
        assert_eq!(r(full.replace("[\"10.0.0.3\"]", "[\"10.0.0.33\"]")).as_deref(), Some("[[peer]]"));
        assert_eq!(r(format!("{full}[heartbeat]\ninterval_ms = 50\n")).as_deref(), Some("[heartbeat]"));
        assert_eq!(r(full.replace("secret_file = \"/s\"", "secret_file = \"/t\"")).as_deref(), Some("`cluster.secret_file`"));
        assert_eq!(restart_reason(&old, &old, &k, &[8u8; 16], true).as_deref(), Some("the cluster key (the contents of cluster.secret_file)"));
        assert!(r(format!("{full}handover = \"overlap\"\n").replace("[group.application]\nkind = \"command\"\ndaemon = \"httpd -h /srv/n1\"\nhandover", "handover"))
            .is_some_and(|w| w.contains("overlap")));
    }

    #[test]
    fn the_hash_covers_what_must_agree_and_not_local_details() {
        let a = cfg(WEB);
        let same = cfg(&WEB.replace("/srv/n1", "/srv/n2"));
        assert_eq!(groups_hash(&a.groups), groups_hash(&same.groups), "command lines may differ per node");
        let other = cfg(&WEB.replace("10.0.0.100/24", "10.0.0.101/24"));
        assert_ne!(groups_hash(&a.groups), groups_hash(&other.groups));
        let other = cfg(&WEB.replace("[1, 2, 3]", "[1, 3]"));
        assert_ne!(groups_hash(&a.groups), groups_hash(&other.groups));
        assert_eq!(groups_hash(&a.groups).len(), 16);
    }

    /// Peers compare the hash, so it must not change with a refactoring of
    /// the model: these values were computed before the model held the
    /// core's types (`nodes`, `preference`, `placement`, `transfer_cost`,
    /// `maturity`). A change of what the hash covers changes them on purpose
    /// (then agents of the two versions report a mismatch: say so in docs/reload.md).
    #[test]
    fn the_hash_of_a_configuration_is_what_the_previous_agent_computed() {
        let rich = "[[group]]\nname = \"db\"\nnodes = \"*\"\npreferred = 2\nexclude = [3]\npreference = \"unordered\"\ntransfer_cost = \"costly\"\n\
            maturity = { primary_up = true, nodes_up = 2, after_ms = 5000 }\n[[group]]\nname = \"all\"\nplacement = \"every\"\n";
        assert_eq!(groups_hash(&cfg(WEB).groups), "3f6d250f28fe89f3");
        assert_eq!(groups_hash(&cfg(&format!("{WEB}{rich}")).groups), "bfaf8b135566afb0");
    }

    #[test]
    fn mismatches_are_reported_once_and_stale_peers_ignored() {
        let mut r = Reloader::new(&cfg(WEB), [0; 16]);
        let mine = r.hash.clone();
        assert_eq!(r.peer_hash(2, mine.clone(), 1), None);
        assert_eq!(r.peer_hash(3, "0000000000000000".into(), 2), Some(vec![3]));
        assert_eq!(r.peer_hash(3, "0000000000000000".into(), 3), None, "said once");
        assert_eq!(r.mismatched(3 + HASH_STALE.as_nanos() as u64), Vec::<u32>::new());
        assert_eq!(r.peer_hash(3, mine, 4), Some(vec![]));
    }
}
