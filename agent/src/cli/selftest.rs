//! `baton selftest`: the eBPF object checked in this kernel.

use anyhow::Result;

/// `baton selftest [--repeat N] [--json]`.
pub fn run(repeat: u32, json: bool) -> Result<()> {
    crate::datapath::check_prerequisites()?;
    let r = crate::datapath::selftest::run(repeat)?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("verifier: all programs accepted");
        println!(
            "in-kernel SipHash-2-4, reference vector ({} bytes): expected {} got {} -> {}",
            baton_common::MAC_COVERED,
            r.kat_expected,
            r.kat_kernel,
            if r.kat_ok { "ok" } else { "MISMATCH" }
        );
        println!("baton_xdp on an authentic heartbeat frame: verdict {} (1 = XDP_DROP, consumed)", r.xdp_verdict_first);
        println!("baton_xdp cost: {:.0} ns per heartbeat (BPF_PROG_TEST_RUN, {} runs)", r.xdp_ns_per_heartbeat, r.repeat);
    }
    if !r.kat_ok || r.xdp_verdict_first != 1 {
        anyhow::bail!("selftest failed");
    }
    Ok(())
}
