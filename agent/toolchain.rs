//! eBPF toolchain detection shared by agent/build.rs and xtask (`cargo xtask setup`).
//!
//! A build script can't depend on other crates of the workspace, so this std-only
//! file is included into both as a module:
//!   - agent/build.rs:     `#[path = "toolchain.rs"] mod toolchain;`
//!   - xtask/src/setup.rs: `#[path = "../../agent/toolchain.rs"] mod toolchain;`
//!
//! Keep it free of dependencies beyond `std`. Each includer uses a subset.
#![allow(dead_code)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const BPF_LINKER: &str = "bpf-linker";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// The command that installs the tested bpf-linker.
pub fn bpf_linker_install_cmd() -> String {
    format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
         --no-default-features --features llvm-22"
    )
}

/// `$CARGO_HOME/bin` and `~/.cargo/bin` (where `cargo install` puts bpf-linker).
pub fn cargo_bin_dirs() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(h) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join("bin"));
    }
    if let Some(h) = env::var_os("HOME").filter(|h| !h.is_empty()) {
        v.push(PathBuf::from(h).join(".cargo/bin"));
    }
    v
}

pub fn is_executable(p: &Path) -> bool {
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

/// bpf-linker in PATH or the cargo bin directories.
pub fn find_bpf_linker() -> Option<PathBuf> {
    find_program(BPF_LINKER)
}

pub fn find_rustup() -> Option<PathBuf> {
    find_program("rustup")
}

/// Run `cmd` (stderr discarded); its trimmed stdout if it succeeded.
pub fn capture(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `<cmd> --print sysroot`, if it succeeds with a non-empty answer.
/// `cmd` is a rustc invocation (e.g. `rustup run nightly rustc`) with its
/// environment already prepared by the caller.
pub fn sysroot(cmd: &mut Command) -> Option<PathBuf> {
    capture(cmd.args(["--print", "sysroot"]))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
}

/// Does `<sysroot>/lib/rustlib/bpfel-unknown-none/lib` contain a prebuilt core?
pub fn has_bpf_core(sysroot: &Path) -> bool {
    fs::read_dir(sysroot.join("lib/rustlib").join(BPF_TARGET).join("lib"))
        .map(|rd| {
            rd.flatten().any(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.starts_with("libcore-") && n.ends_with(".rlib")
            })
        })
        .unwrap_or(false)
}

/// Does the sysroot carry the `rust-src` component (needed for `-Z build-std=core`)?
pub fn has_rust_src(sysroot: &Path) -> bool {
    sysroot
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}

/// Debian rustc-web + cargo-web + libstd-rust-web-dev-bpf usable?
/// `prepare_env` adjusts the environment of the probing rustc.
pub fn debian_toolchain_ok(prepare_env: impl FnOnce(&mut Command)) -> bool {
    is_executable(Path::new(DEBIAN_RUSTC)) && is_executable(Path::new(DEBIAN_CARGO)) && {
        let mut c = Command::new(DEBIAN_RUSTC);
        prepare_env(&mut c);
        sysroot(&mut c).is_some_and(|s| has_bpf_core(&s))
    }
}

/// Sysroot of the rustup nightly toolchain (`rustup run nightly rustc`), if installed.
/// `prepare_env` adjusts the environment of the probing rustup.
pub fn nightly_sysroot(rustup: &Path, prepare_env: impl FnOnce(&mut Command)) -> Option<PathBuf> {
    let mut c = Command::new(rustup);
    prepare_env(&mut c);
    c.args(["run", "nightly", "rustc"]);
    sysroot(&mut c)
}

/// rustup nightly with rust-src usable?
pub fn nightly_toolchain_ok(rustup: &Path, prepare_env: impl FnOnce(&mut Command)) -> bool {
    nightly_sysroot(rustup, prepare_env).is_some_and(|s| has_rust_src(&s))
}
