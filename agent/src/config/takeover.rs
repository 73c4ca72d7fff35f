//! `[takeover]`: the negotiated takeover's settings (docs/takeover.md),
//! parsed and validated; `services::takeover` runs the protocol.

use serde::Deserialize;
use toml::Spanned;

use super::common::{ConfigError, Ctx};


#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeoverCfg {
    pub partner: Option<u32>,
    pub countdown_ms: u32,
    pub cure_ms: u32,
    pub auto_giveback: bool,
}

impl Default for TakeoverCfg {
    fn default() -> Self {
        TakeoverCfg { partner: None, countdown_ms: 10_000, cure_ms: 10_000, auto_giveback: true }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTakeover {
    partner: Option<Spanned<i64>>,
    countdown_ms: Option<Spanned<i64>>,
    cure_ms: Option<Spanned<i64>>,
    auto_giveback: Option<Spanned<bool>>,
}

pub(crate) fn validate(cx: &Ctx, raw: &Option<Spanned<RawTakeover>>, node_id: u32, peers: &[u32]) -> Result<TakeoverCfg, ConfigError> {
    let mut t = TakeoverCfg::default();
    let Some(r) = raw else { return Ok(t) };
    let r = r.get_ref();
    if let Some(p) = &r.partner {
        let id: u32 = cx.int(p, "takeover.partner", 1, u32::MAX as i64 - 1)?;
        if id == node_id || !peers.contains(&id) {
            return Err(cx.invalid(p, "takeover.partner", format!("{id} is not a [[peer]] of this node")));
        }
        t.partner = Some(id);
    }
    if let Some(v) = &r.countdown_ms {
        t.countdown_ms = cx.int(v, "takeover.countdown_ms", 100, 3_600_000)?;
    }
    if let Some(v) = &r.cure_ms {
        t.cure_ms = cx.int(v, "takeover.cure_ms", 0, 86_400_000)?;
    }
    if let Some(v) = &r.auto_giveback {
        t.auto_giveback = *v.get_ref();
    }
    Ok(t)
}
