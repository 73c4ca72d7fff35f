//! The kernel half: loads baton's eBPF object, fills its maps, attaches the XDP
//! program to every interconnect interface and the silence watchdog to a
//! software cpu-clock perf event, pins the maps under our own bpffs directory,
//! and detaches / unpins on shutdown.

pub mod events;
pub mod pinned;
pub mod selfcheck;
pub mod selftest;
pub mod sender;
pub mod status;

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::programs::perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent};
use aya::programs::tc::{self, SchedClassifier, TcAttachType};
use aya::programs::{PerfEvent, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use baton_common::{
    siphash::key_halves, CtrlAllowKey, DatapathConfig, NodeSlot, PeerLink, MAP_CONFIG, MAP_COUNTERS, MAP_CTRL_ALLOW, MAP_EVENTS,
    MAP_FENCED, MAP_HANDOVER, MAP_NODE_SLOTS, MAP_PEERS, MAX_LINKS,
};
use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached};
use tracing::{info, warn};

use crate::config::{Config, XdpModeSetting};

/// The eBPF object, built by `agent/build.rs` from `ebpf/baton-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baton-ebpf.o"));

/// Name of the XDP program as the kernel shows it (`bpftool prog`).
pub const XDP_PROG: &str = "baton_xdp";
pub const WATCHDOG_PROG: &str = "baton_watchdog";
/// TC ingress program of the zero-loss handover (`src/handover.rs`).
pub const HANDOVER_PROG: &str = "baton_handover";
/// Every map we pin.
pub const PINNED_MAPS: [&str; 7] = [MAP_CONFIG, MAP_PEERS, MAP_NODE_SLOTS, MAP_COUNTERS, MAP_FENCED, MAP_HANDOVER, MAP_CTRL_ALLOW];

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("missing capability {missing}: baton needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or CAP_SYS_ADMIN); run it as root or grant them, e.g. AmbientCapabilities= in its systemd unit")]
    MissingCapability { missing: String },
    #[error("kernel {have} is too old: {feature} needs Linux {need} or later")]
    KernelTooOld { have: String, need: &'static str, feature: &'static str },
    #[error("{path} is not a mounted bpffs; mount it with `mount -t bpf bpf /sys/fs/bpf`")]
    BpffsNotMounted { path: PathBuf },
    #[error("link {link:?}: interface {interface:?} does not exist in this network namespace")]
    NoSuchInterface { link: String, interface: String },
    #[error("interface {interface:?} already has XDP program {name:?} (id {prog_id}) attached; baton will not replace a program that is not its own")]
    ForeignXdp { interface: String, prog_id: u32, name: String },
    #[error("interface {interface:?}: a baton XDP program (id {prog_id}) is attached through a bpf_link held by a running process (another baton agent on this interface?)")]
    HeldByOther { interface: String, prog_id: u32 },
    #[error("cannot load the eBPF object: {source}")]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("eBPF program {program}: {action}: {source}")]
    Program {
        program: &'static str,
        action: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF map {map} is missing from the object")]
    MapMissing { map: &'static str },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink, {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
}

type Result<T> = std::result::Result<T, DatapathError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DatapathError {
    let what = what.into();
    move |source| DatapathError::Io { what, source }
}

/// Checks capabilities and kernel version before anything is touched.
pub fn check_prerequisites() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(io("reading /proc/self/status"))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |c: u32| eff & (1u64 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !missing.is_empty() {
        return Err(DatapathError::MissingCapability { missing: missing.join(", ") });
    }
    let uts = nix::sys::utsname::uname().map_err(|e| DatapathError::Io { what: "uname".into(), source: e.into() })?;
    let release = uts.release().to_string_lossy().to_string();
    let mut it = release.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 17) {
        return Err(DatapathError::KernelTooOld {
            have: release,
            need: "5.17",
            feature: "the silence watchdog (bpf_loop; the BPF ring buffer needs 5.8)",
        });
    }
    let st = nix::sys::statfs::statfs(crate::paths::BPFFS_ROOT)
        .map_err(|e| DatapathError::Io { what: "statfs /sys/fs/bpf".into(), source: e.into() })?;
    if st.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
        // As systemd does at boot: mount it ourselves when nobody did.
        let mounted = nix::mount::mount(
            Some("bpf"),
            crate::paths::BPFFS_ROOT,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        );
        if mounted.is_err() {
            return Err(DatapathError::BpffsNotMounted { path: crate::paths::BPFFS_ROOT.into() });
        }
        info!("mounted a bpffs at {}", crate::paths::BPFFS_ROOT);
    }
    Ok(())
}

/// A loaded and attached datapath.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// (interface, mode actually used)
    pub attachments: Vec<(String, &'static str)>,
    pub watchdog_cpu: u32,
    /// What the agent wrote into `BATON_CONFIG` (a critical object: checked
    /// every second, `selfcheck.rs`).
    pub config: DatapathConfig,
}

/// The slot base of the `i`-th peer in `BATON_PEERS`.
pub fn slot_base(peer_index: usize) -> u32 {
    peer_index as u32 * MAX_LINKS
}

impl Datapath {
    /// Loads, fills, attaches and pins. On error nothing stays attached or
    /// pinned (the partially built `Ebpf` is dropped, which detaches).
    pub async fn start(cfg: &Config, key: &[u8; 16], incarnation: u64) -> Result<(Datapath, RingBuf<MapData>)> {
        check_prerequisites()?;
        for l in &cfg.links {
            if nix::net::if_::if_nametoindex(l.interface.as_str()).is_err() {
                return Err(DatapathError::NoSuchInterface { link: l.name.clone(), interface: l.interface.clone() });
            }
        }
        clear_stale_attachments(cfg).await?;
        let pin_dir = cfg.paths.bpffs_dir.clone();
        remove_pins(&pin_dir);

        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).map_err(|source| DatapathError::Load { source })?;
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_forwarder(logger),
            Err(e) => warn!("eBPF log forwarding unavailable: {e}"),
        }

        // Fill the tables before anything is attached.
        {
            let mut slots: HashMap<_, u32, NodeSlot> = HashMap::try_from(map_mut(&mut ebpf, MAP_NODE_SLOTS)?)
                .map_err(|source| DatapathError::Map { map: MAP_NODE_SLOTS, source })?;
            for (i, p) in cfg.peers.iter().enumerate() {
                slots
                    .insert(p.id, NodeSlot { base: slot_base(i), links: cfg.links.len() as u32 }, 0)
                    .map_err(|source| DatapathError::Map { map: MAP_NODE_SLOTS, source })?;
            }
        }
        {
            let mut peers: Array<_, PeerLink> = Array::try_from(map_mut(&mut ebpf, MAP_PEERS)?)
                .map_err(|source| DatapathError::Map { map: MAP_PEERS, source })?;
            for (i, p) in cfg.peers.iter().enumerate() {
                for l in 0..MAX_LINKS {
                    let rec = PeerLink { node: p.id, link: l, ..Default::default() };
                    peers.set(slot_base(i) + l, rec, 0).map_err(|source| DatapathError::Map { map: MAP_PEERS, source })?;
                }
            }
        }
        // The control port's allow-list: every peer's address on each link,
        // with this node's interface of that link (docs/datapath.md).
        {
            let mut allow: HashMap<_, CtrlAllowKey, u32> = HashMap::try_from(map_mut(&mut ebpf, MAP_CTRL_ALLOW)?)
                .map_err(|source| DatapathError::Map { map: MAP_CTRL_ALLOW, source })?;
            for key in ctrl_allow_keys(cfg)? {
                allow.insert(key, 1, 0).map_err(|source| DatapathError::Map { map: MAP_CTRL_ALLOW, source })?;
            }
        }
        let (k0, k1) = key_halves(key);
        let dcfg = DatapathConfig {
            k0,
            k1,
            my_incarnation: incarnation,
            timeout_ns: cfg.timeout_ns(),
            cluster_id: cfg.cluster_id,
            my_node: cfg.node_id,
            port: cfg.port,
            enabled: 1,
            n_slots: slot_base(cfg.peers.len()),
            control_port: cfg.control_port,
            ..Default::default()
        };
        {
            let mut c: Array<_, DatapathConfig> = Array::try_from(map_mut(&mut ebpf, MAP_CONFIG)?)
                .map_err(|source| DatapathError::Map { map: MAP_CONFIG, source })?;
            c.set(0, dcfg, 0).map_err(|source| DatapathError::Map { map: MAP_CONFIG, source })?;
        }

        // Attach.
        let mut attachments = Vec::new();
        {
            let prog: &mut Xdp = ebpf
                .program_mut(XDP_PROG)
                .ok_or(DatapathError::MapMissing { map: XDP_PROG })?
                .try_into()
                .map_err(|source| DatapathError::Program { program: XDP_PROG, action: "type".into(), source })?;
            prog.load().map_err(|source| DatapathError::Program { program: XDP_PROG, action: "load (verifier)".into(), source })?;
            for l in &cfg.links {
                let mode = attach_xdp(prog, &l.interface, cfg.xdp_mode)?;
                info!(interface = %l.interface, link = %l.name, mode, "XDP program attached");
                attachments.push((l.interface.clone(), mode));
            }
        }
        // The handover program, only where a group hands over with overlap.
        let ho_ifaces: std::collections::BTreeSet<&str> = cfg
            .groups
            .iter()
            .filter(|g| g.handover == crate::config::groups::Handover::Overlap)
            .map(|g| g.interface.as_str())
            .collect();
        if !ho_ifaces.is_empty() {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(HANDOVER_PROG)
                .ok_or(DatapathError::MapMissing { map: HANDOVER_PROG })?
                .try_into()
                .map_err(|source| DatapathError::Program { program: HANDOVER_PROG, action: "type".into(), source })?;
            prog.load().map_err(|source| DatapathError::Program { program: HANDOVER_PROG, action: "load (verifier)".into(), source })?;
            for iface in ho_ifaces {
                // Kernels >= 6.6 attach through tcx and need no qdisc; older
                // ones need clsact, which may be there already (ours from
                // before, or another tool's). A real problem shows in attach.
                if let Err(e) = tc::qdisc_add_clsact(iface) {
                    tracing::debug!(interface = iface, "clsact qdisc not added: {e}");
                }
                prog.attach(iface, TcAttachType::Ingress).map_err(|source| DatapathError::Program {
                    program: HANDOVER_PROG,
                    action: format!("attach to {iface} (TC ingress)"),
                    source,
                })?;
                info!(interface = iface, "handover program attached (TC ingress)");
            }
        }
        let watchdog_cpu = first_online_cpu();
        {
            let prog: &mut PerfEvent = ebpf
                .program_mut(WATCHDOG_PROG)
                .ok_or(DatapathError::MapMissing { map: WATCHDOG_PROG })?
                .try_into()
                .map_err(|source| DatapathError::Program { program: WATCHDOG_PROG, action: "type".into(), source })?;
            prog.load()
                .map_err(|source| DatapathError::Program { program: WATCHDOG_PROG, action: "load (verifier)".into(), source })?;
            prog.attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu: watchdog_cpu },
                SamplePolicy::Period(cfg.watchdog_tick_us as u64 * 1000),
                false,
            )
            .map_err(|source| DatapathError::Program {
                program: WATCHDOG_PROG,
                action: format!("attach to cpu-clock on CPU {watchdog_cpu}"),
                source,
            })?;
            info!(cpu = watchdog_cpu, tick_us = cfg.watchdog_tick_us, "silence watchdog attached");
        }

        // Pin, so bpftool and `baton status` can read the state.
        std::fs::create_dir_all(&pin_dir).map_err(io(format!("creating {}", pin_dir.display())))?;
        for name in PINNED_MAPS {
            let path = pin_dir.join(name);
            let map = ebpf.map(name).ok_or(DatapathError::MapMissing { map: name_static(name) })?;
            if let Err(source) = map.pin(&path) {
                remove_pins(&pin_dir);
                return Err(DatapathError::Pin { path, source });
            }
        }
        let events = ebpf.take_map(MAP_EVENTS).ok_or(DatapathError::MapMissing { map: MAP_EVENTS })?;
        let events = RingBuf::try_from(events).map_err(|source| DatapathError::Map { map: MAP_EVENTS, source })?;
        Ok((Datapath { ebpf, pin_dir, attachments, watchdog_cpu, config: dcfg }, events))
    }

    /// Detaches everything and removes our pins.
    pub fn stop(self) {
        let Datapath { ebpf, pin_dir, .. } = self;
        drop(ebpf);
        remove_pins(&pin_dir);
        info!(dir = %pin_dir.display(), "datapath detached and unpinned");
    }
}

/// The `BATON_CTRL_ALLOW` entries of `cfg`: (the link's interface, a
/// peer's address on that link) for every peer and link.
pub fn ctrl_allow_keys(cfg: &Config) -> Result<Vec<CtrlAllowKey>> {
    let mut keys = Vec::new();
    for (li, l) in cfg.links.iter().enumerate() {
        let ifindex = nix::net::if_::if_nametoindex(l.interface.as_str())
            .map_err(|_| DatapathError::NoSuchInterface { link: l.name.clone(), interface: l.interface.clone() })?;
        for p in &cfg.peers {
            if let Some(a) = p.addresses.get(li) {
                keys.push(match a {
                    std::net::IpAddr::V4(v4) => CtrlAllowKey::new(ifindex, &v4.octets()),
                    std::net::IpAddr::V6(v6) => CtrlAllowKey::new(ifindex, &v6.octets()),
                });
            }
        }
    }
    Ok(keys)
}

fn name_static(name: &str) -> &'static str {
    PINNED_MAPS.iter().find(|n| **n == name).copied().unwrap_or("?")
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or(DatapathError::MapMissing { map: name })
}

fn attach_xdp(prog: &mut Xdp, interface: &str, mode: XdpModeSetting) -> Result<&'static str> {
    let err = |m: &str, source| DatapathError::Program {
        program: XDP_PROG,
        action: format!("attach to {interface} in {m} mode"),
        source,
    };
    match mode {
        XdpModeSetting::Native => prog.attach(interface, XdpMode::Driver).map(|_| "native").map_err(|e| err("native", e)),
        XdpModeSetting::Generic => prog.attach(interface, XdpMode::Skb).map(|_| "generic").map_err(|e| err("generic", e)),
        XdpModeSetting::Auto => match prog.attach(interface, XdpMode::Driver) {
            Ok(_) => Ok("native"),
            Err(e) => {
                info!(interface, "native XDP unavailable ({e}); using generic XDP");
                prog.attach(interface, XdpMode::Skb).map(|_| "generic").map_err(|e| err("generic", e))
            }
        },
    }
}

fn first_online_cpu() -> u32 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| s.trim().split(['-', ',']).next().and_then(|x| x.parse().ok()))
        .unwrap_or(0)
}

/// Removes every pin we own under `dir` (and the directory, if then empty).
pub fn remove_pins(dir: &Path) {
    for name in PINNED_MAPS {
        let _ = std::fs::remove_file(dir.join(name));
    }
    let _ = std::fs::remove_dir(dir);
}

fn spawn_log_forwarder(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    tokio::spawn(async move {
        // SAFETY: the logger owns its ring-buffer fd and is moved in.
        let mut fd = match unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!("eBPF log forwarding unavailable: {e}");
                return;
            }
        };
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(g) => g,
                Err(_) => return,
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// A program left attached to one of our interfaces by an earlier agent that
/// died is replaced (detached); anything that is not ours is refused.
async fn clear_stale_attachments(cfg: &Config) -> Result<()> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
    let task = tokio::spawn(conn);
    let res = async {
        for l in &cfg.links {
            let mut links = handle.link().get().match_name(l.interface.clone()).execute();
            let msg = links
                .try_next()
                .await
                .map_err(|source| DatapathError::Netlink { what: format!("reading link {}", l.interface), source })?;
            let Some(msg) = msg else { continue };
            let mut prog_id = 0u32;
            let mut attached = XdpAttached::None;
            for a in &msg.attributes {
                if let LinkAttribute::Xdp(xs) = a {
                    for x in xs {
                        match x {
                            LinkXdp::ProgId(id) => prog_id = *id,
                            LinkXdp::Attached(m) => attached = *m,
                            _ => {}
                        }
                    }
                }
            }
            if prog_id == 0 {
                continue;
            }
            let name = aya::programs::loaded_programs()
                .filter_map(|p| p.ok())
                .find(|p| p.id() == prog_id)
                .and_then(|p| p.name_as_str().map(str::to_string))
                .unwrap_or_default();
            if name != XDP_PROG {
                return Err(DatapathError::ForeignXdp { interface: l.interface.clone(), prog_id, name });
            }
            let flags = match attached {
                XdpAttached::Driver => 1u32 << 2,
                XdpAttached::Hardware => 1u32 << 3,
                _ => 1u32 << 1,
            };
            let mut detach = LinkMessage::default();
            detach.header.index = msg.header.index;
            detach.attributes.push(LinkAttribute::Xdp(vec![LinkXdp::Fd(-1), LinkXdp::Flags(flags)]));
            match handle.link().set(detach).execute().await {
                Ok(()) => warn!(interface = %l.interface, prog_id, "replaced a stale baton XDP attachment left by an earlier agent"),
                Err(_) => return Err(DatapathError::HeldByOther { interface: l.interface.clone(), prog_id }),
            }
        }
        Ok(())
    }
    .await;
    task.abort();
    res
}
