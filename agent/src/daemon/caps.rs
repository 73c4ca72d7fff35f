//! The capabilities a configuration needs beyond the datapath's
//! (`datapath::check_prerequisites`: CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON),
//! checked at start so that a missing one stops the agent with one message
//! naming it (exit code 78) instead of failing at the first takeover:
//!
//! * CAP_NET_RAW when a group has floating addresses (gratuitous ARP and
//!   unsolicited NA go out of an `AF_PACKET` socket);
//! * CAP_SYS_RAWIO when `[[disk]]`s are configured (SCSI-3 persistent
//!   reservations through `SG_IO`).
//!
//! CAP_SYS_NICE (the sender's SCHED_FIFO) and CAP_IPC_LOCK (`mlockall`)
//! stay warnings: the agent works without them, less well.

use crate::config::Config;

const CAP_NET_RAW: u32 = 13;
const CAP_SYS_RAWIO: u32 = 17;

#[derive(Debug, thiserror::Error)]
#[error("missing capability {missing}: {why}; grant it (packaging/baton.service lists it in CapabilityBoundingSet= and AmbientCapabilities=) or run baton as root")]
pub struct MissingCapability {
    pub missing: &'static str,
    pub why: String,
}

/// The effective capability set of this process (`CapEff` of /proc/self/status).
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()))
        .unwrap_or(0)
}

/// What `cfg` needs, against the effective set `eff`.
pub fn check(cfg: &Config, eff: u64) -> Result<(), MissingCapability> {
    let has = |c: u32| eff & (1u64 << c) != 0;
    if let Some(g) = cfg.groups.iter().find(|g| !g.addresses.is_empty()) {
        if !has(CAP_NET_RAW) {
            return Err(MissingCapability {
                missing: "CAP_NET_RAW",
                why: format!("group {:?} has floating addresses, announced by gratuitous ARP / unsolicited NA on a packet socket", g.name),
            });
        }
    }
    if let Some(d) = cfg.disks.first() {
        if !has(CAP_SYS_RAWIO) {
            return Err(MissingCapability {
                missing: "CAP_SYS_RAWIO",
                why: format!("disk {:?} is fenced with SCSI-3 persistent reservations through SG_IO", d.name),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            "[cluster]\nname = \"t\"\nid = 1\nsecret_file = \"/s\"\n[node]\nid = 1\nname = \"n1\"\n\
             [[link]]\nname = \"r0\"\ninterface = \"eth0\"\naddress = \"10.0.0.1\"\n\
             [[peer]]\nid = 2\nname = \"n2\"\naddresses = [\"10.0.0.2\"]\n{extra}"
        );
        crate::config::parse(std::path::Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn net_raw_is_needed_for_floating_addresses_only() {
        let all = u64::MAX;
        let without_raw = all & !(1 << CAP_NET_RAW);
        assert!(check(&cfg(""), without_raw).is_ok());
        let web = cfg("[[group]]\nname = \"web\"\naddresses = [\"10.0.0.100/24\"]\nnodes = [1, 2]\n[group.application]\nkind = \"command\"\ndaemon = \"sleep 1000\"\n");
        assert!(check(&web, all).is_ok());
        let e = check(&web, without_raw).unwrap_err();
        assert_eq!(e.missing, "CAP_NET_RAW");
        assert!(e.to_string().starts_with("missing capability CAP_NET_RAW: group \"web\" has floating addresses"), "{e}");
    }
}
