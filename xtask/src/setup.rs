//! `cargo xtask setup`: install (idempotently) everything needed to build and
//! test baton on Debian 12 / Ubuntu, and `check()`: verify without installing.
//!
//! The eBPF toolchain detection is shared with agent/build.rs through the
//! std-only source file agent/toolchain.rs (a build script can't depend on
//! other crates, so both include that file as a module).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

#[path = "../../agent/toolchain.rs"]
mod toolchain;

use toolchain::{bpf_linker_install_cmd, capture, has_rust_src, DEBIAN_RUSTC, LLVM_PREFIX};
pub use toolchain::{find_program, BPF_LINKER_VERSION, BPF_TARGET};

/// Debian's Rust toolchain that ships a prebuilt `core` for bpfel-unknown-none.
const TOOLCHAIN_PKGS: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"];
/// What `cargo install bpf-linker --features llvm-22` links against.
const LLVM_PKGS: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Needed at run/test time (nginx-light: the OCF nginx test of
/// tests/tests/ownership.rs; prometheus: the real Prometheus server and
/// promtool of tests/tests/metrics.rs; stress-ng: the stress faults of
/// `cargo xtask chaos`, the load of tests/tests/startup.rs and of
/// `bench detect`'s stress soak; procps: /bin/kill, ExecReload= of the unit).
const RUNTIME_PKGS: &[&str] = &[
    "keepalived", "bpftool", "iproute2", "iputils-ping", "curl", "resource-agents", "busybox", "nginx-light", "prometheus", "stress-ng", "procps",
];

/// The test VM's host side (docs/vm.md): qemu, and depmod/modprobe and xz
/// to assemble its image. Installed without recommends (qemu's would bring a
/// GUI stack).
const VM_PKGS: &[&str] = &["qemu-system-x86", "kmod", "xz-utils"];

fn all_pkgs() -> impl Iterator<Item = &'static str> {
    TOOLCHAIN_PKGS
        .iter()
        .chain(LLVM_PKGS)
        .chain(RUNTIME_PKGS)
        .copied()
}

// ---------------------------------------------------------------- detection

/// The probes run under `cargo xtask`, so don't let its toolchain pin leak in.
fn probe_env(cmd: &mut Command) {
    cmd.env_remove("RUSTUP_TOOLCHAIN");
}

/// Debian rustc-web + cargo-web + libstd-rust-web-dev-bpf usable?
pub fn debian_toolchain_ok() -> bool {
    toolchain::debian_toolchain_ok(probe_env)
}

fn rustup() -> Option<PathBuf> {
    toolchain::find_rustup()
}

/// Sysroot of the rustup nightly toolchain, if installed.
fn nightly_sysroot() -> Option<PathBuf> {
    toolchain::nightly_sysroot(&rustup()?, probe_env)
}

/// `bpf-linker --version` output (e.g. "bpf-linker 0.13.0"), if installed.
pub fn bpf_linker_version() -> Option<(PathBuf, String)> {
    let p = toolchain::find_bpf_linker()?;
    let v = capture(Command::new(&p).arg("--version")).unwrap_or_default();
    Some((p, v))
}

fn version_matches(v: &str) -> bool {
    v.split_whitespace().any(|w| w == BPF_LINKER_VERSION)
}

fn dpkg_installed(pkg: &str) -> bool {
    capture(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]))
        .is_some_and(|s| s == "installed")
}

fn apt_candidate(pkg: &str) -> bool {
    capture(Command::new("apt-cache").args(["policy", pkg])).is_some_and(|out| {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .any(|c| c.trim() != "(none)" && !c.trim().is_empty())
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------- check

/// Verify (without installing) that the eBPF object can be built.
/// Errors point at `cargo xtask setup`.
pub fn check() -> Result<()> {
    if env::var_os("BATON_EBPF_OBJ").is_some_and(|v| !v.is_empty()) {
        eprintln!("xtask: BATON_EBPF_OBJ is set, the prebuilt eBPF object will be embedded (no eBPF toolchain needed)");
        return Ok(());
    }
    let mut missing = Vec::new();
    match bpf_linker_version() {
        None => missing.push(format!("bpf-linker (not in PATH or ~/.cargo/bin; `{}`)", bpf_linker_install_cmd())),
        Some((p, v)) if !version_matches(&v) => eprintln!(
            "xtask: warning: {} reports {:?}, expected {BPF_LINKER_VERSION}; `cargo xtask setup` installs the tested version",
            p.display(),
            v
        ),
        Some(_) => {}
    }
    if !debian_toolchain_ok() && !nightly_sysroot().is_some_and(|s| has_rust_src(&s)) {
        missing.push(format!(
            "a Rust toolchain targeting {BPF_TARGET}: Debian's rustc-web + cargo-web + libstd-rust-web-dev-bpf \
             (`apt-get install rustc-web cargo-web libstd-rust-web-dev-bpf`) or rustup nightly with rust-src \
             (`rustup component add rust-src --toolchain nightly`)"
        ));
    }
    if !missing.is_empty() {
        bail!(
            "missing build prerequisites: {}.\nRun `cargo xtask setup` (as root) to install them.",
            missing.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- setup

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn apt_based() -> bool {
    let os = fs::read_to_string("/etc/os-release").unwrap_or_default();
    let like = os.lines().any(|l| {
        (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
            && (l.contains("debian") || l.contains("ubuntu"))
    });
    like && find_program("apt-get").is_some() && find_program("dpkg-query").is_some()
}

/// Install everything that's missing. A no-op (needing no root) when all is in place.
pub fn setup() -> Result<()> {
    let mut did_something = false;

    // 1. Distribution packages.
    if !apt_based() {
        bail!(
            "`cargo xtask setup` supports Debian 12 / Ubuntu (apt) only. On this system install by hand: \
             a Rust toolchain that can build for {BPF_TARGET} (rustup nightly + `rustup component add rust-src \
             --toolchain nightly`), LLVM 22 development files, bpf-linker {BPF_LINKER_VERSION} (`{}`), and \
             keepalived, bpftool, iproute2, ping, curl.",
            bpf_linker_install_cmd()
        );
    }
    let mut missing: Vec<&str> = all_pkgs().filter(|p| !dpkg_installed(p)).collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "`cargo xtask setup` must run as root to install missing packages: {} \
                 (e.g. `sudo -E env PATH=\"$PATH\" cargo xtask setup`)",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        let unavailable: Vec<&str> = missing
            .iter()
            .copied()
            .filter(|p| !apt_candidate(p))
            .collect();
        if !unavailable.is_empty() {
            let only_toolchain = unavailable.iter().all(|p| TOOLCHAIN_PKGS.contains(p));
            if only_toolchain && nightly_sysroot().is_some() {
                eprintln!(
                    "xtask: {} not available from apt; using rustup nightly + rust-src for the eBPF build instead",
                    unavailable.join(" ")
                );
                missing.retain(|p| !unavailable.contains(p));
            } else {
                bail!(
                    "these packages are not available from the configured apt sources: {}.\n\
                     baton's build needs Debian 12 (bookworm) with bookworm-updates and bookworm-security enabled \
                     (rustc-web, cargo-web, libstd-rust-web-dev-bpf, llvm-22-dev come from there); on other \
                     distributions install the equivalents by hand.",
                    unavailable.join(" ")
                );
            }
        }
        if !missing.is_empty() {
            run(Command::new("apt-get")
                .args(["install", "-y"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            did_something = true;
        }
    }

    // 1b. The test VM's host packages.
    let vm_missing: Vec<&str> = VM_PKGS.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if !vm_missing.is_empty() {
        if !is_root() {
            bail!(
                "`cargo xtask setup` must run as root to install missing packages: {}",
                vm_missing.join(" ")
            );
        }
        run(Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&vm_missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
        did_something = true;
    }

    // 2. Rust toolchain for bpfel-unknown-none.
    if !debian_toolchain_ok() {
        match nightly_sysroot() {
            Some(s) if has_rust_src(&s) => {}
            Some(_) => {
                let r = rustup().expect("nightly_sysroot found rustup");
                run(Command::new(r)
                    .env_remove("RUSTUP_TOOLCHAIN")
                    .args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
                did_something = true;
            }
            None => bail!(
                "no Rust toolchain can build for {BPF_TARGET}: {DEBIAN_RUSTC} has no {BPF_TARGET} core \
                 (package libstd-rust-web-dev-bpf) and there is no rustup nightly toolchain \
                 (`rustup toolchain install nightly --component rust-src`)"
            ),
        }
    }

    // 3. bpf-linker.
    let linker_ok = bpf_linker_version().is_some_and(|(_, v)| version_matches(&v));
    if !linker_ok {
        if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
            bail!("bpf-linker needs LLVM 22 development files at {LLVM_PREFIX} (package llvm-22-dev), not found");
        }
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run(Command::new(cargo)
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env_remove("CARGO_TARGET_DIR")
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]))?;
        did_something = true;
        match bpf_linker_version() {
            Some((_, v)) if version_matches(&v) => {}
            Some((p, v)) => bail!(
                "after installing, {} reports {v:?} (expected {BPF_LINKER_VERSION}); is another bpf-linker earlier in PATH?",
                p.display()
            ),
            None => bail!("bpf-linker installed but not found in PATH or ~/.cargo/bin"),
        }
    }

    // 4. clippy, for the determinism check of the cores (`cargo xtask test`).
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let has_clippy = Command::new(&cargo).args(["clippy", "--version"]).output().is_ok_and(|o| o.status.success());
    if !has_clippy {
        match rustup() {
            Some(r) => {
                run(Command::new(r).args(["component", "add", "clippy"]))?;
                did_something = true;
            }
            None => bail!("cargo clippy is missing and there is no rustup to add it (`rustup component add clippy`)"),
        }
    }

    check()?;
    if did_something {
        eprintln!("xtask: setup complete");
    } else {
        eprintln!("xtask: setup: all prerequisites already installed");
    }
    Ok(())
}
