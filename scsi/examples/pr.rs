//! A mini `sg_persist` over baton-scsi, for trying the crate on a real target.
//!
//! ```text
//! pr [--timeout MS] DEVICE OP [ARGS]
//!   inquiry | tur | keys | reservation | caps | full-status
//!   register KEY | register-ignore KEY | unregister KEY
//!   reserve KEY [TYPE] | release KEY [TYPE] | clear KEY
//!   preempt MY_KEY VICTIM_KEY [TYPE] | preempt-abort MY_KEY VICTIM_KEY [TYPE]
//! pr key CLUSTER NODE            (print a node's key; no device)
//! ```
//! KEY is `0x...` hex, decimal, or `CLUSTER:NODE`; TYPE is any name
//! `PrType` parses (default `wero`). Exit status: 0 done, 24 RESERVATION
//! CONFLICT and 6 UNIT ATTENTION (as sg3_utils), 2 usage, 1 anything else.

use std::process::ExitCode;
use std::time::Duration;

use baton_scsi::{key_owner, node_key, Device, Error, PrType};

fn usage() -> ExitCode {
    eprintln!(
        "usage: pr [--timeout MS] DEVICE inquiry|tur|keys|reservation|caps|full-status\n\
         \x20      pr [--timeout MS] DEVICE register|register-ignore|unregister|clear KEY\n\
         \x20      pr [--timeout MS] DEVICE reserve|release KEY [TYPE]\n\
         \x20      pr [--timeout MS] DEVICE preempt|preempt-abort MY_KEY VICTIM_KEY [TYPE]\n\
         \x20      pr key CLUSTER NODE\n\
         KEY: 0xHEX, decimal or CLUSTER:NODE; TYPE: wero (default), wear, we, ea, earo, eaar or 1-8"
    );
    ExitCode::from(2)
}

fn parse_key(s: &str) -> Option<u64> {
    if let Some((c, n)) = s.split_once(':') {
        return Some(node_key(c.parse().ok()?, n.parse().ok()?));
    }
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn show_key(k: u64) -> String {
    match key_owner(k) {
        Some((c, n)) => format!("{k:#018x}  (cluster {c} node {n})"),
        None => format!("{k:#018x}"),
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut timeout = None;
    if args.first().map(String::as_str) == Some("--timeout") && args.len() > 1 {
        let Ok(ms) = args[1].parse() else {
            return usage();
        };
        timeout = Some(Duration::from_millis(ms));
        args.drain(..2);
    }
    if args.first().map(String::as_str) == Some("key") {
        let (Some(c), Some(n)) = (
            args.get(1).and_then(|a| a.parse().ok()),
            args.get(2).and_then(|a| a.parse().ok()),
        ) else {
            return usage();
        };
        println!("{}", show_key(node_key(c, n)));
        return ExitCode::SUCCESS;
    }
    let (Some(path), Some(op)) = (args.first(), args.get(1)) else {
        return usage();
    };
    let rest = &args[2..];
    let key = |i: usize| rest.get(i).and_then(|s| parse_key(s));
    let ty = |i: usize| {
        rest.get(i)
            .map_or(Ok(PrType::default()), |s| s.parse::<PrType>())
    };

    let mut dev = match Device::open(path) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    if let Some(t) = timeout {
        dev.set_timeout(t);
    }
    let result = match (op.as_str(), key(0), key(1)) {
        ("inquiry", ..) => dev.inquiry().map(|i| {
            println!(
                "{} {} {}  type {:#04x} ({}), SPC version {}, sg version {}",
                i.vendor,
                i.product,
                i.revision,
                i.device_type,
                i.device_type_name(),
                i.version,
                dev.sg_version()
            )
        }),
        ("tur", ..) => dev.test_unit_ready().map(|()| println!("ready")),
        ("keys", ..) => dev.read_keys().map(|k| {
            println!(
                "PR generation={:#x}, {} registered key(s)",
                k.generation,
                k.keys.len()
            );
            for key in k.keys {
                println!("  {}", show_key(key));
            }
        }),
        ("reservation", ..) => dev.read_reservation().map(|r| match r.reservation {
            None => println!("PR generation={:#x}, no reservation", r.generation),
            Some(res) => println!(
                "PR generation={:#x}, reserved by key {}, type {} ({}), scope {}",
                r.generation,
                show_key(res.key),
                res.pr_type().map_or("unknown", PrType::name),
                res.type_code,
                res.scope
            ),
        }),
        ("caps", ..) => dev.report_capabilities().map(|c| {
            println!(
                "CRH={} SIP_C={} ATP_C={} PTPL_C={} TMV={} ALLOW_COMMANDS={} PTPL_A={}",
                u8::from(c.crh),
                u8::from(c.sip_c),
                u8::from(c.atp_c),
                u8::from(c.ptpl_c),
                u8::from(c.tmv),
                c.allow_commands,
                u8::from(c.ptpl_a)
            );
            for t in &c.types {
                println!("  supports {} ({}, type {})", t, t.abbreviation(), t.code());
            }
        }),
        ("full-status", ..) => dev.read_full_status().map(|s| {
            println!(
                "PR generation={:#x}, {} registration(s)",
                s.generation,
                s.registrants.len()
            );
            for r in s.registrants {
                println!(
                    "  {}{} via {}",
                    show_key(r.key),
                    if r.holder {
                        format!(" HOLDER type {}", r.type_code)
                    } else {
                        String::new()
                    },
                    r.iscsi_name()
                        .unwrap_or_else(|| format!("transport id {:02x?}", r.transport_id))
                );
            }
        }),
        ("register", Some(k), _) => dev.register(k),
        ("register-ignore", Some(k), _) => dev.register_ignore(k),
        ("unregister", Some(k), _) => dev.unregister(k),
        ("clear", Some(k), _) => dev.clear(k),
        ("reserve", Some(k), _) => match ty(1) {
            Ok(t) => dev.reserve(k, t),
            Err(e) => return bad(e),
        },
        ("release", Some(k), _) => match ty(1) {
            Ok(t) => dev.release(k, t),
            Err(e) => return bad(e),
        },
        ("preempt", Some(me), Some(victim)) => match ty(2) {
            Ok(t) => dev.preempt(me, victim, t),
            Err(e) => return bad(e),
        },
        ("preempt-abort", Some(me), Some(victim)) => match ty(2) {
            Ok(t) => dev.preempt_and_abort(me, victim, t),
            Err(e) => return bad(e),
        },
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn bad(e: baton_scsi::ParsePrTypeError) -> ExitCode {
    eprintln!("pr: {e}");
    ExitCode::from(2)
}

fn fail(e: Error) -> ExitCode {
    eprintln!("pr: {e}");
    match e {
        Error::ReservationConflict { .. } => ExitCode::from(24),
        Error::UnitAttention { .. } => ExitCode::from(6),
        _ => ExitCode::FAILURE,
    }
}
