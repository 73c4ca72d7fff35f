//! What the parsers of every table share: the error type, the context an
//! error is built from (file, text, line), and the links and disks that
//! other tables refer to. A leaf of `config/`: the table modules use it, and
//! `config` (mod.rs) re-exports it, so no table module uses `config` itself.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Syntax { file: PathBuf, line: usize, message: String },
    #[error("{file}:{line}: `{key}`: {reason}")]
    Invalid { file: PathBuf, line: usize, key: String, reason: String },
    #[error("{file}: `{key}`: {reason}")]
    Missing { file: PathBuf, key: String, reason: String },
    #[error("secret file {file}: {reason}")]
    Secret { file: PathBuf, reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u8,
    pub name: String,
    pub interface: String,
    pub address: IpAddr,
    /// How heartbeats leave on this link (`link.transport`).
    pub transport: Transport,
}

/// `[[link]] transport`: how heartbeats and distress signals are sent on a
/// link (docs/wire-format.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One datagram per interval for every peer (wire format v2 entries), to
    /// the limited broadcast address 255.255.255.255 (IPv4) or the
    /// link-local all-nodes group ff02::1 (IPv6) out of the link's
    /// interface: for a shared L2 segment (opt-in, see docs/wire-format.md
    /// for why it is not the default yet).
    Broadcast,
    /// One datagram per peer per interval, to the peer's address on the link:
    /// the default; also works on routed interconnects.
    Unicast,
}

/// A shared disk (`[[disk]]`): this node's path to it and how it is fenced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    /// This node's path to the disk (`device`, or this node's entry of
    /// `devices`).
    pub device: PathBuf,
    pub pr_type: baton_scsi::PrType,
    /// Period of the self-check (READ KEYS) while registered.
    pub check_interval_ms: u32,
    /// Timeout of one SCSI command.
    pub timeout_ms: u32,
    /// Two configured nodes: both sides of a partition keep quorum and the
    /// preemption race on this disk decides (instead of "the lower id").
    pub quorum: bool,
}

/// Where a value came from, for errors that name the file, line and key
/// (shared with the `[[group]]` validation in `groups.rs`).
pub(crate) struct Ctx<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }
    pub(crate) fn invalid<T>(&self, at: &Spanned<T>, key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(at.span().start),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
    pub(super) fn missing(&self, key: &str, reason: &str) -> ConfigError {
        ConfigError::Missing { file: self.file.to_path_buf(), key: key.into(), reason: reason.into() }
    }
    pub(crate) fn int<T: TryFrom<i64>>(&self, v: &Spanned<i64>, key: &str, lo: i64, hi: i64) -> Result<T, ConfigError> {
        let x = *v.get_ref();
        if x < lo || x > hi {
            return Err(self.invalid(v, key, format!("{x} is out of range {lo}..={hi}")));
        }
        T::try_from(x).map_err(|_| self.invalid(v, key, format!("{x} is out of range")))
    }
    pub(super) fn name(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            return Err(self.invalid(v, key, format!("{s:?} must be 1-32 characters of a-z, 0-9, '-' or '_'")));
        }
        Ok(s.clone())
    }
    /// A non-empty shell command line.
    pub(crate) fn command(&self, v: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
        let s = v.get_ref().trim();
        if s.is_empty() {
            return Err(self.invalid(v, key, "must be a non-empty command line"));
        }
        if s.contains('\0') {
            return Err(self.invalid(v, key, "must not contain a NUL character"));
        }
        Ok(s.to_string())
    }
    pub(super) fn ip(&self, v: &Spanned<String>, key: &str) -> Result<IpAddr, ConfigError> {
        v.get_ref()
            .parse::<IpAddr>()
            .map_err(|_| self.invalid(v, key, format!("{:?} is not an IPv4 or IPv6 address", v.get_ref())))
    }
}

/// A core enum that `baton.toml` gives by name (`placement = "one"`): the
/// model holds the core's type, the file its own lower-case names (the
/// core's serde names, `One`, are the control channel's).
pub(crate) trait ConfigName: Sized + 'static {
    /// The enum's name (for the deserializer).
    const TYPE: &'static str;
    /// Every name the file may give, in the order an error lists them.
    const NAMES: &'static [&'static str];
    fn from_config_name(name: &str) -> Option<Self>;
}

/// A [`ConfigName`] enum read from the file: read as an enum, so a bad value
/// gets the same error a derived enum would (`unknown variant `x`, expected
/// `one` or `every``, `wanted string or table`), with its line.
pub(crate) struct Named<T>(pub T);

impl<'de, T: ConfigName> serde::Deserialize<'de> for Named<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{EnumAccess, Error, VariantAccess};
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: ConfigName> serde::de::Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "one of {}", T::NAMES.join(", "))
            }
            fn visit_str<E: Error>(self, name: &str) -> Result<Named<T>, E> {
                T::from_config_name(name).map(Named).ok_or_else(|| E::unknown_variant(name, T::NAMES))
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Named<T>, A::Error> {
                let (name, variant): (String, _) = data.variant()?;
                let v = T::from_config_name(&name).ok_or_else(|| A::Error::unknown_variant(&name, T::NAMES))?;
                variant.unit_variant()?;
                Ok(Named(v))
            }
        }
        d.deserialize_enum(T::TYPE, T::NAMES, V(std::marker::PhantomData))
    }
}
