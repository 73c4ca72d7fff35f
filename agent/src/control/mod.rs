//! The agent's transports: the control channel between agents (`channel`),
//! the local subsystem socket (`subsys`) and the local control socket
//! (`socket`).

pub mod channel;
pub mod socket;
pub mod subsys;
