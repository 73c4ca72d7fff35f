//! The local control socket's protocol (docs/control-socket.md): one
//! request line, one reply line, as typed values. [`Request::parse`] and
//! [`Request::encode`] are the one codec of requests, used by the agent
//! (which parses) and by every client in the agent's code (`baton`'s
//! subcommands, the S4.5 watchdog), which encode; [`Reply`] likewise.
//!
//! | request | reply |
//! |---|---|
//! | `ping` | `ok <incarnation>` |
//! | `group-state <group>` | `ok active\|busy\|idle\|unknown` (asked by a watchdog process, S4.5) |
//! | `reload [--all]` | `ok: reloaded ...` (docs/reload.md); `--all` asks every peer to reload its own file |
//! | `stop` / `stop-all` | `ok: leaving` / `ok: the whole cluster is stopping` |
//! | `distress <reason>` | `ok` once the distress signal was sent; reason `communication`, `protocol`, `component`, `corruption`, `admin` (or its code 1-5) |
//! | `switchover <group> [<node>]` | `ok` once handed to the services core (it asks the deciding node) |
//! | `standby <node>` / `unstandby <node>` | `ok` |
//! | `maintenance on\|off` | `ok` |
//! | `offline <group>` / `online <group>` | `ok` (S4.6 off-line mode, asked of the deciding node) |
//! | `register <group>` / `deregister <group>` | `ok` |
//! | `takeover <node> [<reason ...>]` / `giveback <node>` | `ok` (docs/takeover.md; the reason is the rest of the line, `operator` when none) |
//! | `fence-confirm <node>` | `ok: node <node> confirmed fenced` |
//!
//! Any request may be answered `error: <why>`; a line that does not parse is
//! answered `error: <the ProtocolError>` (unknown command, missing or extra
//! argument, bad node id, ...), never dropped. Words are separated by
//! spaces; a group name or a reason that could not be carried as such (a
//! space in a group name, a line break anywhere) is refused by
//! [`Request::encode`] instead of being sent as another request.

use std::fmt;

/// Why a request or reply line could not be parsed, or a request not
/// encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("empty request")]
    Empty,
    #[error("the request contains a control character ({found:?})")]
    ControlCharacter { found: char },
    #[error("unknown command {command:?} (known: {})", COMMANDS.join(", "))]
    UnknownCommand { command: String },
    #[error("{command}: missing argument {what} (usage: {})", usage(command))]
    MissingArgument { command: &'static str, what: &'static str },
    #[error("{command}: unexpected argument {arg:?} (usage: {})", usage(command))]
    ExtraArgument { command: &'static str, arg: String },
    #[error("{command}: {value:?} is not a node id")]
    BadNodeId { command: &'static str, value: String },
    #[error("{command}: {value:?} is not one of {allowed}")]
    BadValue { command: &'static str, value: String, allowed: &'static str },
    #[error("unknown reason {value:?}: use communication, protocol, component, corruption or admin")]
    BadReason { value: String },
    #[error("{command}: the {what} {value:?} cannot be sent on the control socket: {why}")]
    Unencodable { command: &'static str, what: &'static str, value: String, why: &'static str },
    #[error("unexpected reply {line:?} to `{command}`")]
    BadReply { command: &'static str, line: String },
}

/// Every command word, in the order of the usage text.
pub const COMMANDS: &[&str] = &[
    "ping",
    "group-state",
    "reload",
    "stop",
    "stop-all",
    "distress",
    "switchover",
    "standby",
    "unstandby",
    "maintenance",
    "offline",
    "online",
    "register",
    "deregister",
    "takeover",
    "giveback",
    "fence-confirm",
];

fn usage(command: &str) -> &'static str {
    match command {
        "ping" => "ping",
        "group-state" => "group-state GROUP",
        "reload" => "reload [--all]",
        "stop" => "stop",
        "stop-all" => "stop-all",
        "distress" => "distress REASON",
        "switchover" => "switchover GROUP [NODE]",
        "standby" => "standby NODE",
        "unstandby" => "unstandby NODE",
        "maintenance" => "maintenance on|off",
        "offline" => "offline GROUP",
        "online" => "online GROUP",
        "register" => "register GROUP",
        "deregister" => "deregister GROUP",
        "takeover" => "takeover NODE [REASON...]",
        "giveback" => "giveback NODE",
        "fence-confirm" => "fence-confirm NODE",
        _ => "see docs/control-socket.md",
    }
}

/// A distress reason (S0.1), carried by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistressReason {
    Communication,
    Protocol,
    Component,
    Corruption,
    Admin,
}

impl DistressReason {
    pub const ALL: [DistressReason; 5] = [Self::Communication, Self::Protocol, Self::Component, Self::Corruption, Self::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Communication => "communication",
            Self::Protocol => "protocol",
            Self::Component => "component",
            Self::Corruption => "corruption",
            Self::Admin => "admin",
        }
    }

    /// The code carried by the distress datagram.
    pub fn code(self) -> u32 {
        match self {
            Self::Communication => baton_common::DISTRESS_COMMUNICATION,
            Self::Protocol => baton_common::DISTRESS_PROTOCOL,
            Self::Component => baton_common::DISTRESS_COMPONENT,
            Self::Corruption => baton_common::DISTRESS_CORRUPTION,
            Self::Admin => baton_common::DISTRESS_ADMIN,
        }
    }
}

impl std::str::FromStr for DistressReason {
    type Err = ProtocolError;

    /// A name, or (as the agent always accepted) its code.
    fn from_str(s: &str) -> Result<Self, ProtocolError> {
        Self::ALL
            .into_iter()
            .find(|r| r.name() == s || s.parse::<u32>().ok() == Some(r.code()))
            .ok_or_else(|| ProtocolError::BadReason { value: s.to_string() })
    }
}

/// One request to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    GroupState { group: String },
    Reload { all: bool },
    Stop,
    StopAll,
    Distress { reason: DistressReason },
    Switchover { group: String, to: Option<u32> },
    Standby { node: u32 },
    Unstandby { node: u32 },
    Maintenance { on: bool },
    Offline { group: String },
    Online { group: String },
    Register { group: String },
    Deregister { group: String },
    Takeover { node: u32, reason: String },
    Giveback { node: u32 },
    FenceConfirm { node: u32 },
}

/// The reason of a takeover when the request names none.
pub const DEFAULT_TAKEOVER_REASON: &str = "operator";

impl Request {
    /// The command word.
    pub fn command(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::GroupState { .. } => "group-state",
            Request::Reload { .. } => "reload",
            Request::Stop => "stop",
            Request::StopAll => "stop-all",
            Request::Distress { .. } => "distress",
            Request::Switchover { .. } => "switchover",
            Request::Standby { .. } => "standby",
            Request::Unstandby { .. } => "unstandby",
            Request::Maintenance { .. } => "maintenance",
            Request::Offline { .. } => "offline",
            Request::Online { .. } => "online",
            Request::Register { .. } => "register",
            Request::Deregister { .. } => "deregister",
            Request::Takeover { .. } => "takeover",
            Request::Giveback { .. } => "giveback",
            Request::FenceConfirm { .. } => "fence-confirm",
        }
    }

    /// Parses one request line (without its line break; surrounding
    /// blanks are ignored, words are separated by any run of blanks).
    pub fn parse(line: &str) -> Result<Request, ProtocolError> {
        if let Some(found) = line.chars().find(|c| c.is_control() && !c.is_whitespace()) {
            return Err(ProtocolError::ControlCharacter { found });
        }
        let mut words = line.split_whitespace();
        let first = words.next().ok_or(ProtocolError::Empty)?;
        let command = COMMANDS.iter().copied().find(|c| *c == first).ok_or_else(|| ProtocolError::UnknownCommand { command: first.to_string() })?;
        let mut args = Args { command, words };
        let req = match command {
            "ping" => Request::Ping,
            "group-state" => Request::GroupState { group: args.word("GROUP")? },
            "reload" => match args.optional() {
                None => Request::Reload { all: false },
                Some("--all") => Request::Reload { all: true },
                Some(other) => return Err(ProtocolError::ExtraArgument { command, arg: other.to_string() }),
            },
            "stop" => Request::Stop,
            "stop-all" => Request::StopAll,
            "distress" => Request::Distress { reason: args.required("REASON")?.parse()? },
            "switchover" => Request::Switchover { group: args.word("GROUP")?, to: args.optional().map(|n| node_id(command, n)).transpose()? },
            "standby" => Request::Standby { node: args.node()? },
            "unstandby" => Request::Unstandby { node: args.node()? },
            "maintenance" => Request::Maintenance {
                on: match args.required("on|off")? {
                    "on" => true,
                    "off" => false,
                    other => return Err(ProtocolError::BadValue { command, value: other.to_string(), allowed: "on, off" }),
                },
            },
            "offline" => Request::Offline { group: args.word("GROUP")? },
            "online" => Request::Online { group: args.word("GROUP")? },
            "register" => Request::Register { group: args.word("GROUP")? },
            "deregister" => Request::Deregister { group: args.word("GROUP")? },
            "takeover" => {
                let node = args.node()?;
                let rest: Vec<&str> = args.words.by_ref().collect();
                let reason = if rest.is_empty() { DEFAULT_TAKEOVER_REASON.to_string() } else { rest.join(" ") };
                Request::Takeover { node, reason }
            }
            "giveback" => Request::Giveback { node: args.node()? },
            "fence-confirm" => Request::FenceConfirm { node: args.node()? },
            _ => unreachable!("every word of COMMANDS is parsed"),
        };
        args.end()?;
        Ok(req)
    }

    /// The request line (without its line break). Refuses a value that
    /// would not come back as itself: an empty group or one with blanks, a
    /// reason with a line break or another control character.
    pub fn encode(&self) -> Result<String, ProtocolError> {
        let command = self.command();
        let word = |what: &'static str, v: &str| -> Result<(), ProtocolError> {
            let why = if v.is_empty() {
                "it is empty"
            } else if v.chars().any(char::is_whitespace) {
                "it contains a blank"
            } else if v.chars().any(char::is_control) {
                "it contains a control character"
            } else {
                return Ok(());
            };
            Err(ProtocolError::Unencodable { command, what, value: v.to_string(), why })
        };
        Ok(match self {
            Request::Ping | Request::Stop | Request::StopAll => command.to_string(),
            Request::Reload { all: false } => "reload".to_string(),
            Request::Reload { all: true } => "reload --all".to_string(),
            Request::Distress { reason } => format!("distress {}", reason.name()),
            Request::Maintenance { on } => format!("maintenance {}", if *on { "on" } else { "off" }),
            Request::Standby { node } | Request::Unstandby { node } | Request::Giveback { node } | Request::FenceConfirm { node } => {
                format!("{command} {node}")
            }
            Request::GroupState { group }
            | Request::Offline { group }
            | Request::Online { group }
            | Request::Register { group }
            | Request::Deregister { group }
            | Request::Switchover { group, to: None } => {
                word("group", group)?;
                format!("{command} {group}")
            }
            Request::Switchover { group, to: Some(n) } => {
                word("group", group)?;
                format!("switchover {group} {n}")
            }
            Request::Takeover { node, reason } => {
                // Blanks inside the reason are carried (one space each);
                // a reason that is all blanks is the default.
                let words: Vec<&str> = reason.split_whitespace().collect();
                if reason.chars().any(|c| c.is_control() && !c.is_whitespace()) || reason.contains(['\n', '\r']) {
                    return Err(ProtocolError::Unencodable { command, what: "reason", value: reason.clone(), why: "it contains a line break or another control character" });
                }
                if words.is_empty() {
                    format!("takeover {node} {DEFAULT_TAKEOVER_REASON}")
                } else {
                    format!("takeover {node} {}", words.join(" "))
                }
            }
        })
    }

    /// The services core's input for an operator request of the services
    /// (switchover, standby, maintenance, off-line mode, registration);
    /// `None` for the others.
    pub fn services_input(&self) -> Option<baton_core::services::Input> {
        use baton_core::services::Input as S;
        Some(match self {
            Request::Switchover { group, to } => S::Switchover { service: group.clone(), to: *to },
            Request::Standby { node } => S::Standby { node: *node, on: true },
            Request::Unstandby { node } => S::Standby { node: *node, on: false },
            Request::Maintenance { on } => S::Maintenance { on: *on },
            Request::Offline { group } => S::Offline { service: group.clone(), on: true },
            Request::Online { group } => S::Offline { service: group.clone(), on: false },
            Request::Register { group } => S::Register { service: group.clone() },
            Request::Deregister { group } => S::Deregister { service: group.clone() },
            _ => return None,
        })
    }
}

impl fmt::Display for Request {
    /// The request line, or (for one that cannot be encoded) its debug form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encode() {
            Ok(l) => f.write_str(&l),
            Err(_) => write!(f, "{self:?}"),
        }
    }
}

fn node_id(command: &'static str, s: &str) -> Result<u32, ProtocolError> {
    s.parse::<u32>().map_err(|_| ProtocolError::BadNodeId { command, value: s.to_string() })
}

/// The arguments after the command word.
struct Args<'a> {
    command: &'static str,
    words: std::str::SplitWhitespace<'a>,
}

impl<'a> Args<'a> {
    fn required(&mut self, what: &'static str) -> Result<&'a str, ProtocolError> {
        self.words.next().ok_or(ProtocolError::MissingArgument { command: self.command, what })
    }

    fn optional(&mut self) -> Option<&'a str> {
        self.words.next()
    }

    fn word(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        self.required(what).map(str::to_string)
    }

    fn node(&mut self) -> Result<u32, ProtocolError> {
        let w = self.required("NODE")?;
        node_id(self.command, w)
    }

    fn end(mut self) -> Result<(), ProtocolError> {
        match self.words.next() {
            None => Ok(()),
            Some(extra) => Err(ProtocolError::ExtraArgument { command: self.command, arg: extra.to_string() }),
        }
    }
}

/// What a group is to this node's agent (`group-state`, S4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    /// It runs here.
    Active,
    /// A run or halt of it is in progress here.
    Busy,
    /// Configured, and neither.
    Idle,
    /// Not a group of this agent (or no services level).
    Unknown,
}

impl GroupState {
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Active => "active",
            GroupState::Busy => "busy",
            GroupState::Idle => "idle",
            GroupState::Unknown => "unknown",
        }
    }

    pub fn from_name(s: &str) -> Option<GroupState> {
        [GroupState::Active, GroupState::Busy, GroupState::Idle, GroupState::Unknown].into_iter().find(|g| g.name() == s)
    }
}

/// One reply of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `ok`: done (or handed on).
    Ok,
    /// `ok: <text>`: done, with what was done.
    Done(String),
    /// `ok <incarnation>`: the answer to `ping`.
    Pong { incarnation: u64 },
    /// `ok <state>`: the answer to `group-state`.
    GroupState(GroupState),
    /// `error: <why>`: refused, or the request did not parse.
    Error(String),
}

impl Reply {
    /// A refusal carrying an error's message.
    pub fn error(e: impl fmt::Display) -> Reply {
        Reply::Error(e.to_string())
    }

    /// The reply line (without its line break). Line breaks inside a
    /// message are carried as spaces (a reply is one line).
    pub fn encode(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        match self {
            Reply::Ok => "ok".to_string(),
            Reply::Done(m) => format!("ok: {}", one_line(m)),
            Reply::Pong { incarnation } => format!("ok {incarnation}"),
            Reply::GroupState(s) => format!("ok {}", s.name()),
            Reply::Error(m) => format!("error: {}", one_line(m)),
        }
    }

    /// Parses the reply line to `request` (`ok <word>` means the
    /// incarnation to `ping`, the state to `group-state`, and is not a
    /// reply to anything else).
    pub fn parse(line: &str, request: &Request) -> Result<Reply, ProtocolError> {
        let line = line.trim();
        let bad = || ProtocolError::BadReply { command: request.command(), line: line.to_string() };
        if line == "ok" {
            return Ok(Reply::Ok);
        }
        if let Some(m) = line.strip_prefix("error: ") {
            return Ok(Reply::Error(m.to_string()));
        }
        if let Some(m) = line.strip_prefix("ok: ") {
            return Ok(Reply::Done(m.to_string()));
        }
        let word = line.strip_prefix("ok ").ok_or_else(bad)?;
        match request {
            Request::Ping => word.parse().map(|incarnation| Reply::Pong { incarnation }).map_err(|_| bad()),
            Request::GroupState { .. } => GroupState::from_name(word).map(Reply::GroupState).ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_request() -> Vec<Request> {
        vec![
            Request::Ping,
            Request::GroupState { group: "web".into() },
            Request::Reload { all: false },
            Request::Reload { all: true },
            Request::Stop,
            Request::StopAll,
            Request::Distress { reason: DistressReason::Admin },
            Request::Distress { reason: DistressReason::Component },
            Request::Switchover { group: "web".into(), to: None },
            Request::Switchover { group: "db-1".into(), to: Some(3) },
            Request::Standby { node: 2 },
            Request::Unstandby { node: 2 },
            Request::Maintenance { on: true },
            Request::Maintenance { on: false },
            Request::Offline { group: "web".into() },
            Request::Online { group: "web".into() },
            Request::Register { group: "web".into() },
            Request::Deregister { group: "web".into() },
            Request::Takeover { node: 1, reason: "operator".into() },
            Request::Takeover { node: 4, reason: "disk path lost".into() },
            Request::Giveback { node: 1 },
            Request::FenceConfirm { node: 4_000_000_000 },
        ]
    }

    #[test]
    fn every_request_round_trips_and_every_command_is_covered() {
        let all = every_request();
        for r in &all {
            let line = r.encode().unwrap();
            assert_eq!(Request::parse(&line).as_ref(), Ok(r), "{line}");
            assert_eq!(line.split_whitespace().next(), Some(r.command()));
            assert!(!line.contains('\n'));
        }
        for c in COMMANDS {
            assert!(all.iter().any(|r| r.command() == *c), "{c} has no round-trip case");
        }
    }

    #[test]
    fn the_wire_text_is_the_documented_one() {
        // The lines tests, scripts and docs use (docs/control-socket.md).
        let cases = [
            ("ping", Request::Ping),
            ("stop", Request::Stop),
            ("stop-all", Request::StopAll),
            ("reload --all", Request::Reload { all: true }),
            ("distress component", Request::Distress { reason: DistressReason::Component }),
            ("switchover web 2", Request::Switchover { group: "web".into(), to: Some(2) }),
            ("maintenance off", Request::Maintenance { on: false }),
            ("takeover 2 operator", Request::Takeover { node: 2, reason: "operator".into() }),
            ("fence-confirm 3", Request::FenceConfirm { node: 3 }),
            ("group-state web", Request::GroupState { group: "web".into() }),
        ];
        for (line, req) in cases {
            assert_eq!(req.encode().unwrap(), line);
            assert_eq!(Request::parse(line).unwrap(), req);
        }
        // Blanks around and between words do not matter; a takeover
        // without a reason is the operator's.
        assert_eq!(Request::parse("  standby\t 2 ").unwrap(), Request::Standby { node: 2 });
        assert_eq!(Request::parse("takeover 2").unwrap(), Request::Takeover { node: 2, reason: "operator".into() });
        // The distress code is still accepted, and named on the way out.
        assert_eq!(Request::parse("distress 3").unwrap(), Request::Distress { reason: DistressReason::Component });
        for r in DistressReason::ALL {
            assert_eq!(r.name().parse::<DistressReason>().unwrap().code(), r.code());
        }
    }

    #[test]
    fn every_parse_error_names_the_problem() {
        use ProtocolError as E;
        let cases: Vec<(&str, ProtocolError, &str)> = vec![
            ("", E::Empty, "empty request"),
            ("   ", E::Empty, "empty request"),
            ("frobnicate 2", E::UnknownCommand { command: "frobnicate".into() }, "unknown command \"frobnicate\" (known: ping, group-state,"),
            ("standby", E::MissingArgument { command: "standby", what: "NODE" }, "standby: missing argument NODE (usage: standby NODE)"),
            ("switchover", E::MissingArgument { command: "switchover", what: "GROUP" }, "switchover: missing argument GROUP (usage: switchover GROUP [NODE])"),
            ("distress", E::MissingArgument { command: "distress", what: "REASON" }, "distress: missing argument REASON"),
            ("maintenance", E::MissingArgument { command: "maintenance", what: "on|off" }, "maintenance: missing argument on|off"),
            ("group-state", E::MissingArgument { command: "group-state", what: "GROUP" }, "group-state: missing argument GROUP"),
            ("takeover", E::MissingArgument { command: "takeover", what: "NODE" }, "takeover: missing argument NODE"),
            ("standby two", E::BadNodeId { command: "standby", value: "two".into() }, "standby: \"two\" is not a node id"),
            ("switchover web x", E::BadNodeId { command: "switchover", value: "x".into() }, "switchover: \"x\" is not a node id"),
            ("giveback -1", E::BadNodeId { command: "giveback", value: "-1".into() }, "giveback: \"-1\" is not a node id"),
            ("fence-confirm 4294967296", E::BadNodeId { command: "fence-confirm", value: "4294967296".into() }, "is not a node id"),
            ("takeover me now", E::BadNodeId { command: "takeover", value: "me".into() }, "takeover: \"me\" is not a node id"),
            ("standby 2 3", E::ExtraArgument { command: "standby", arg: "3".into() }, "standby: unexpected argument \"3\" (usage: standby NODE)"),
            ("switchover web 2 3", E::ExtraArgument { command: "switchover", arg: "3".into() }, "unexpected argument \"3\""),
            ("stop now", E::ExtraArgument { command: "stop", arg: "now".into() }, "stop: unexpected argument \"now\" (usage: stop)"),
            ("ping 1", E::ExtraArgument { command: "ping", arg: "1".into() }, "ping: unexpected argument"),
            ("reload --al", E::ExtraArgument { command: "reload", arg: "--al".into() }, "reload: unexpected argument \"--al\" (usage: reload [--all])"),
            ("reload --all x", E::ExtraArgument { command: "reload", arg: "x".into() }, "unexpected argument \"x\""),
            ("maintenance maybe", E::BadValue { command: "maintenance", value: "maybe".into(), allowed: "on, off" }, "maintenance: \"maybe\" is not one of on, off"),
            ("distress bored", E::BadReason { value: "bored".into() }, "unknown reason \"bored\": use communication, protocol, component, corruption or admin"),
            ("distress 6", E::BadReason { value: "6".into() }, "unknown reason \"6\""),
            ("Ping", E::UnknownCommand { command: "Ping".into() }, "unknown command \"Ping\""),
            ("register w\u{1}b", E::ControlCharacter { found: '\u{1}' }, "the request contains a control character ('\\u{1}')"),
        ];
        for (line, err, text) in cases {
            let got = Request::parse(line);
            assert_eq!(got, Err(err), "{line:?}");
            let msg = got.unwrap_err().to_string();
            assert!(msg.contains(text), "{line:?}: {msg}");
        }
    }

    #[test]
    fn values_that_would_change_the_request_are_not_encoded() {
        // A group "web 2" must not become `switchover web 2` (a move of
        // `web` to node 2), nor a reason with a line break a second request.
        let cases = [
            (Request::Switchover { group: "web 2".into(), to: None }, "it contains a blank"),
            (Request::Offline { group: "".into() }, "it is empty"),
            (Request::GroupState { group: "a\tb".into() }, "it contains a blank"),
            (Request::Register { group: "a\u{7}".into() }, "a control character"),
            (Request::Takeover { node: 1, reason: "x\nstop".into() }, "line break"),
        ];
        for (r, why) in cases {
            let e = r.encode().unwrap_err();
            assert!(matches!(e, ProtocolError::Unencodable { .. }), "{e:?}");
            assert!(e.to_string().contains(why), "{e}");
        }
        // A reason's blanks are carried as single spaces.
        let r = Request::Takeover { node: 1, reason: "  disk   lost ".into() };
        assert_eq!(r.encode().unwrap(), "takeover 1 disk lost");
        assert_eq!(Request::Takeover { node: 1, reason: " ".into() }.encode().unwrap(), "takeover 1 operator");
    }

    #[test]
    fn replies_round_trip_and_are_read_against_their_request() {
        let ping = Request::Ping;
        let gs = Request::GroupState { group: "web".into() };
        let sw = Request::Switchover { group: "web".into(), to: None };
        let cases = [
            (Reply::Ok, &sw, "ok"),
            (Reply::Done("leaving".into()), &Request::Stop, "ok: leaving"),
            (Reply::Pong { incarnation: 1_765_000_000_123_456 }, &ping, "ok 1765000000123456"),
            (Reply::GroupState(GroupState::Busy), &gs, "ok busy"),
            (Reply::GroupState(GroupState::Unknown), &gs, "ok unknown"),
            (Reply::Error("no group \"x\" is configured".into()), &sw, "error: no group \"x\" is configured"),
        ];
        for (reply, req, line) in cases {
            assert_eq!(reply.encode(), line);
            assert_eq!(Reply::parse(line, req), Ok(reply.clone()));
            assert_eq!(Reply::parse(&format!("{line}\n"), req), Ok(reply));
        }
        // A server-side refusal is an error reply to any request.
        assert_eq!(Reply::parse("error: busy (too many connections to the control socket)", &ping), Ok(Reply::Error("busy (too many connections to the control socket)".into())));
        // `ok <word>` only answers ping and group-state, with a word of theirs.
        for (line, req) in [("ok active", &sw), ("ok x12", &ping), ("ok maybe", &gs), ("fine", &ping), ("", &gs)] {
            let e = Reply::parse(line, req).unwrap_err();
            assert_eq!(e, ProtocolError::BadReply { command: req.command(), line: line.to_string() });
            assert!(e.to_string().starts_with("unexpected reply"), "{e}");
        }
        // A message stays one line.
        assert_eq!(Reply::Error("a\nb".into()).encode(), "error: a b");
    }

    /// Lines made of the protocol's words and of odd ones (a fixed
    /// pseudo-random sequence): a line that parses encodes to a line that
    /// parses to the same request (what the fuzz target `control_line`
    /// checks at length).
    #[test]
    fn whatever_parses_encodes_back_to_itself() {
        let odd = [
            "", " ", "\t", "web", "db-1", "2", "0", "+7", "-1", "4294967295", "4294967296", "on", "off", "--all", "operator", "3", "é", "\u{a0}", "\u{85}", "\u{1}",
            "\u{1c}", "x\u{7f}", "ok", "error:",
        ];
        let mut words: Vec<&str> = COMMANDS.to_vec();
        words.extend(odd);
        words.extend(DistressReason::ALL.iter().map(|r| r.name()));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let len = 1 + next(5);
            let mut line = String::new();
            for i in 0..len {
                if i > 0 {
                    line.push_str([" ", "  ", "\t", " \u{a0}"][next(4)]);
                }
                line.push_str(words[next(words.len())]);
            }
            match Request::parse(&line) {
                Ok(req) => {
                    parsed += 1;
                    let again = req.encode().unwrap_or_else(|e| panic!("{line:?} parsed as {req:?} but does not encode: {e}"));
                    assert_eq!(Request::parse(&again).as_ref(), Ok(&req), "{line:?} -> {again:?}");
                }
                Err(_) => refused += 1,
            }
        }
        // Both sides were exercised.
        assert!(parsed > 500 && refused > 500, "parsed {parsed}, refused {refused}");
    }

    #[test]
    fn services_requests_become_services_inputs() {
        use baton_core::services::Input as S;
        assert_eq!(Request::Switchover { group: "web".into(), to: Some(2) }.services_input(), Some(S::Switchover { service: "web".into(), to: Some(2) }));
        assert_eq!(Request::Unstandby { node: 2 }.services_input(), Some(S::Standby { node: 2, on: false }));
        assert_eq!(Request::Online { group: "web".into() }.services_input(), Some(S::Offline { service: "web".into(), on: false }));
        let services: Vec<&str> = every_request().iter().filter(|r| r.services_input().is_some()).map(|r| r.command()).collect();
        assert_eq!(
            services,
            ["switchover", "switchover", "standby", "unstandby", "maintenance", "maintenance", "offline", "online", "register", "deregister"]
        );
    }
}
