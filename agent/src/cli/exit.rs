//! The agent's exit codes (docs/operations.md, "Exit codes"), which the
//! systemd unit's `Restart=on-failure` and `RestartPreventExitStatus=`
//! follow:
//!
//! | code | meaning | systemd |
//! |------|---------|---------|
//! | 0 | stopped as asked (SIGTERM/SIGINT, `baton stop`, a graceful leave) | not restarted |
//! | 1 | an error that a new start may not have (a datapath, disk or socket failure at start, an error in the loop) | restarted |
//! | 2 | a command-line usage error (clap) | not restarted |
//! | 3 | clustering halted on this node and must not start again by itself: a local critical failure (S0, "until someone looks"), a halt in a cluster of two configured nodes, or `membership.rejoin_ms = 0` | not restarted |
//! | 78 | unusable configuration or host (EX_CONFIG): a configuration or secret file error, a missing capability, a kernel too old, a missing interface, an XDP program of someone else | not restarted |
//!
//! A halt that may rejoin (lost quorum, forced out, ...) does not exit: the
//! process starts a new life in place (`membership.rejoin_ms`), so systemd
//! sees the same service running.

/// Stopped as asked.
pub const STOPPED: i32 = 0;
/// An error a restart may cure.
pub const ERROR: i32 = 1;
/// Clustering halted for good on this node (see the module doc).
pub const HALTED: i32 = 3;
/// Configuration or host unusable (sysexits' EX_CONFIG).
pub const CONFIG: i32 = 78;

/// The halt that ends the agent (exit code [`HALTED`]).
#[derive(Debug, thiserror::Error)]
#[error("clustering halted on this node ({why}); restart the agent to join again")]
pub struct Halted {
    pub why: String,
}

/// The exit code for an error that ended the program.
pub fn code_of(e: &anyhow::Error) -> i32 {
    use crate::datapath::DatapathError as D;
    for cause in e.chain() {
        if cause.is::<Halted>() {
            return HALTED;
        }
        if cause.is::<crate::config::ConfigError>() || cause.is::<crate::daemon::caps::MissingCapability>() {
            return CONFIG;
        }
        if let Some(d) = cause.downcast_ref::<D>() {
            if matches!(
                d,
                D::MissingCapability { .. } | D::KernelTooOld { .. } | D::BpffsNotMounted { .. } | D::NoSuchInterface { .. } | D::ForeignXdp { .. }
            ) {
                return CONFIG;
            }
        }
    }
    ERROR
}

/// An error and its causes on one line, like `{:#}`, but a cause whose text
/// the message before it already contains (our errors name their source in
/// their message) is not repeated.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_cause_through_contexts() {
        let halted = anyhow::Error::new(Halted { why: "LocalFailure".into() }).context("running");
        assert_eq!(code_of(&halted), HALTED);
        let cap = anyhow::Error::new(crate::datapath::DatapathError::MissingCapability { missing: "CAP_BPF".into() }).context("starting");
        assert_eq!(code_of(&cap), CONFIG);
        let cfg = anyhow::Error::new(crate::config::ConfigError::Secret { file: "/etc/baton/secret".into(), reason: "missing".into() });
        assert_eq!(code_of(&cfg), CONFIG);
        assert_eq!(code_of(&anyhow::anyhow!("binding the control socket")), ERROR);
    }

    #[test]
    fn an_error_names_each_cause_once() {
        use anyhow::Context;
        let io = std::io::Error::from_raw_os_error(2);
        let e = crate::config::load(std::path::Path::new("/nonexistent/baton.toml")).unwrap_err();
        let e = anyhow::Error::new(e).context("loading the configuration");
        let text = error_text(&e);
        assert_eq!(text.matches(&io.to_string()).count(), 1, "{text}");
        assert!(text.starts_with("loading the configuration: /nonexistent/baton.toml: cannot read: "), "{text}");
        // A cause that the message does not contain is still shown.
        let e = Err::<(), _>(io).context("opening the disk").unwrap_err();
        assert_eq!(error_text(&e), format!("opening the disk: {}", std::io::Error::from_raw_os_error(2)));
    }
}
