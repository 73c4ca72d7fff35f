//! The agent's transports: the control channel between agents (`channel`),
//! the local subsystem socket (`subsys`) and the local control socket
//! (`socket`, with its requests and replies in `protocol`).

pub mod channel;
pub mod protocol;
pub mod socket;
pub mod subsys;
