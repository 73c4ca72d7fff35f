//! The floating addresses this agent holds and whether the address lease
//! is lost: the state `addr` (which records every address it adds or
//! releases) and `lease` (which withdraws and restores them) share. A leaf
//! of `services/`, so that neither of the two uses the other through it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

/// The floating addresses this agent configured, and whether the lease
/// withdrew them.
#[derive(Debug, Default)]
pub struct Held {
    pub entries: BTreeSet<(String, IpAddr, u8)>,
    pub withdrawn: bool,
}

/// Held addresses; the lock is held across the netlink calls that change
/// them, so the lease and the services never interleave on one address.
pub static HELD: LazyLock<tokio::sync::Mutex<Held>> = LazyLock::new(|| tokio::sync::Mutex::new(Held::default()));

/// Set by the lease thread the moment the lease ends, before it removes
/// anything (and cleared when it is regained or the node left its view):
/// [`crate::services::addr::add`] then only records an address.
pub static LOST: AtomicBool = AtomicBool::new(false);

/// Whether the lease is lost right now (the addresses are withdrawn, the
/// daemons frozen).
pub fn lost() -> bool {
    LOST.load(Ordering::SeqCst)
}
