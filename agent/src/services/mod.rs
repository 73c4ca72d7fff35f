//! Resource groups on this node: the runtime of the services core (`svc`),
//! resource runners, floating addresses and their lease, handover, the
//! watchdog and the guard, fencing, the negotiated takeover, health checks
//! and the event manager.

pub mod addr;
pub mod carrier;
pub mod eventmgr;
pub mod fencing;
pub mod guard;
pub mod handover;
pub mod health;
pub mod held;
pub mod lease;
pub mod metrics;
pub mod monitor;
pub mod resource;
pub mod sdbus;
pub mod svc;
pub mod takeover;
pub mod watchdog;
