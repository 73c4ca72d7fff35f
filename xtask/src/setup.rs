//! `cargo xtask setup`: install (idempotently) everything needed to build and
//! test baton on Debian 12 / Ubuntu, and `check()`: verify without installing.
//!
//! The eBPF toolchain detection here mirrors agent/build.rs (which can't share
//! code with us); keep the two in sync.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";

/// Debian's Rust toolchain that ships a prebuilt `core` for bpfel-unknown-none.
const TOOLCHAIN_PKGS: &[&str] = &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"];
/// What `cargo install bpf-linker --features llvm-22` links against.
const LLVM_PKGS: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Needed at run/test time.
const RUNTIME_PKGS: &[&str] = &["keepalived", "bpftool", "iproute2", "iputils-ping", "curl"];

fn all_pkgs() -> impl Iterator<Item = &'static str> {
    TOOLCHAIN_PKGS
        .iter()
        .chain(LLVM_PKGS)
        .chain(RUNTIME_PKGS)
        .copied()
}

fn bpf_linker_install_cmd() -> String {
    format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
         --no-default-features --features llvm-22"
    )
}

// ---------------------------------------------------------------- detection

fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(h) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".cargo/bin"));
    }
    v
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Look a program up in PATH, then in the cargo bin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(cargo_bin_dirs())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn capture(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn has_bpf_core(sysroot: &Path) -> bool {
    fs::read_dir(sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib"))
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("libcore-") && n.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

/// Debian rustc-web + cargo-web + libstd-rust-web-dev-bpf usable?
pub fn debian_toolchain_ok() -> bool {
    is_executable(Path::new(DEBIAN_RUSTC))
        && is_executable(Path::new(DEBIAN_CARGO))
        && capture(
            Command::new(DEBIAN_RUSTC)
                .env_remove("RUSTUP_TOOLCHAIN")
                .args(["--print", "sysroot"]),
        )
        .is_some_and(|s| !s.is_empty() && has_bpf_core(Path::new(&s)))
}

fn rustup() -> Option<PathBuf> {
    find_program("rustup")
}

/// Sysroot of the rustup nightly toolchain, if installed.
fn nightly_sysroot() -> Option<PathBuf> {
    let r = rustup()?;
    capture(
        Command::new(r)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["run", "nightly", "rustc", "--print", "sysroot"]),
    )
    .filter(|s| !s.is_empty())
    .map(PathBuf::from)
}

fn nightly_has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// `bpf-linker --version` output (e.g. "bpf-linker 0.13.0"), if installed.
pub fn bpf_linker_version() -> Option<(PathBuf, String)> {
    let p = find_program("bpf-linker")?;
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
    if !debian_toolchain_ok() && !nightly_sysroot().is_some_and(|s| nightly_has_rust_src(&s)) {
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

    // 2. Rust toolchain for bpfel-unknown-none.
    if !debian_toolchain_ok() {
        match nightly_sysroot() {
            Some(s) if nightly_has_rust_src(&s) => {}
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

    check()?;
    if did_something {
        eprintln!("xtask: setup complete");
    } else {
        eprintln!("xtask: setup: all prerequisites already installed");
    }
    Ok(())
}
