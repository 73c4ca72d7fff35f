//! Build script for baton-agent: compiles the eBPF program (ebpf/baton-ebpf)
//! for `bpfel-unknown-none` and places the object at `$OUT_DIR/baton-ebpf.o`,
//! where `src/` embeds it with
//! `aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baton-ebpf.o"))`.
//!
//! Toolchain selection (first that works):
//!   1. `BATON_EBPF_OBJ=/path/to/object` — copy a prebuilt object (escape hatch).
//!   2. Debian's `rustc-web`/`cargo-web` (/usr/bin/rustc, /usr/bin/cargo) with the
//!      prebuilt `core` for bpfel-unknown-none from `libstd-rust-web-dev-bpf`.
//!   3. rustup `nightly` with the `rust-src` component (`-Z build-std=core`).
//!
//! `BATON_EBPF_TOOLCHAIN=debian|nightly` forces one of 2./3.
//! Both toolchain paths need `bpf-linker` (in PATH or ~/.cargo/bin).
//! Anything missing ends the build with one message pointing at `cargo xtask setup`.
//! The detection helpers live in toolchain.rs, shared with `cargo xtask setup`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command};

use anyhow::{bail, Context, Result};

#[path = "toolchain.rs"]
mod toolchain;

use toolchain::{BPF_TARGET, DEBIAN_CARGO, DEBIAN_RUSTC};

const EBPF_BIN: &str = "baton";
const OUT_NAME: &str = "baton-ebpf.o";
const EM_BPF: u16 = 247;

fn main() {
    if let Err(e) = run() {
        eprintln!();
        eprintln!("error: baton-agent build.rs: {e:#}");
        process::exit(1);
    }
}

fn run() -> Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let root = manifest_dir
        .parent()
        .context("agent/ has no parent directory")?
        .to_path_buf();
    let ebpf_dir = root.join("ebpf/baton-ebpf");
    let common_dir = root.join("ebpf/baton-common");
    let dest = out_dir.join(OUT_NAME);

    println!("cargo:rerun-if-env-changed=BATON_EBPF_OBJ");
    println!("cargo:rerun-if-env-changed=BATON_EBPF_TOOLCHAIN");
    for p in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // Optional files: a rerun-if-changed on a missing path would make every build dirty.
    for p in [
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
    ] {
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }

    // 1. Escape hatch: a prebuilt object.
    if let Some(obj) = env::var_os("BATON_EBPF_OBJ").filter(|v| !v.is_empty()) {
        let obj = PathBuf::from(obj);
        println!("cargo:rerun-if-changed={}", obj.display());
        if !obj.is_file() {
            bail!("BATON_EBPF_OBJ={} is not a file", obj.display());
        }
        check_bpf_elf(&obj)?;
        fs::copy(&obj, &dest)
            .with_context(|| format!("copying {} to {}", obj.display(), dest.display()))?;
        return Ok(());
    }

    // 2./3. Build it.
    let toolchain = detect_toolchain()?;
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = toolchain.command(&ebpf_dir, &target_dir);
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "building the eBPF program ({}) with {} failed ({status}); see the compiler output above",
            ebpf_dir.display(),
            toolchain.describe()
        );
    }
    let built = target_dir.join(BPF_TARGET).join("release").join(EBPF_BIN);
    check_bpf_elf(&built)?;
    fs::copy(&built, &dest)
        .with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    Ok(())
}

enum Toolchain {
    /// Debian rustc-web/cargo-web with the prebuilt bpfel core.
    Debian { linker_dir: PathBuf },
    /// rustup nightly + rust-src, `-Z build-std=core`.
    Nightly {
        rustup: PathBuf,
        linker_dir: PathBuf,
    },
}

impl Toolchain {
    fn describe(&self) -> &'static str {
        match self {
            Toolchain::Debian { .. } => "Debian rustc-web (/usr/bin/cargo, /usr/bin/rustc)",
            Toolchain::Nightly { .. } => "rustup nightly (-Z build-std=core)",
        }
    }

    fn command(&self, ebpf_dir: &Path, target_dir: &Path) -> Command {
        let (mut cmd, linker_dir) = match self {
            Toolchain::Debian { linker_dir } => {
                let mut c = Command::new(DEBIAN_CARGO);
                clean_env(&mut c);
                c.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
                c.args(["build", "--release"]);
                (c, linker_dir)
            }
            Toolchain::Nightly { rustup, linker_dir } => {
                let mut c = Command::new(rustup);
                clean_env(&mut c);
                c.args([
                    "run",
                    "nightly",
                    "cargo",
                    "build",
                    "-Z",
                    "build-std=core",
                    "--release",
                ]);
                (c, linker_dir)
            }
        };
        cmd.args(["--target", BPF_TARGET])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(ebpf_dir)
            .env("PATH", prepend_path(linker_dir));
        cmd
    }
}

/// Remove everything the outer (rustup) cargo put into our environment that
/// would leak into the nested eBPF build: compiler/wrapper overrides, flags,
/// target/profile settings, package metadata, the jobserver, the toolchain pin.
fn clean_env(cmd: &mut Command) {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
    ];
    const DROP_EXACT: &[&str] = &[
        "TARGET",
        "HOST",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "OUT_DIR",
        "NUM_JOBS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
    ];
    const DROP_PREFIXES: &[&str] = &["CARGO", "__CARGO", "RUSTC_", "RUSTDOC_", "DEP_"];
    for (key, _) in env::vars_os() {
        let Some(k) = key.to_str() else { continue };
        let drop = DROP_EXACT.contains(&k)
            || (DROP_PREFIXES.iter().any(|p| k.starts_with(p))
                && !KEEP_PREFIXES.iter().any(|p| k.starts_with(p)));
        if drop {
            cmd.env_remove(&key);
        }
    }
}

fn prepend_path(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    if let Some(p) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&p));
    }
    env::join_paths(dirs).unwrap_or_else(|_| env::var_os("PATH").unwrap_or_default())
}

fn detect_toolchain() -> Result<Toolchain> {
    let linker = toolchain::find_bpf_linker();

    // BATON_EBPF_TOOLCHAIN=debian|nightly restricts the choice (default: try both).
    let only = env::var("BATON_EBPF_TOOLCHAIN").unwrap_or_default();
    if !matches!(only.as_str(), "" | "debian" | "nightly") {
        bail!("BATON_EBPF_TOOLCHAIN={only:?}: expected `debian` or `nightly`");
    }

    // Debian rustc-web + libstd-rust-web-dev-bpf.
    let debian_ok = only != "nightly" && toolchain::debian_toolchain_ok(clean_env);

    // rustup nightly + rust-src.
    let rustup = toolchain::find_rustup();
    let nightly_ok = only != "debian"
        && rustup
            .as_ref()
            .is_some_and(|r| toolchain::nightly_toolchain_ok(r, clean_env));

    match (linker, debian_ok, nightly_ok) {
        (Some(l), true, _) => Ok(Toolchain::Debian {
            linker_dir: parent(&l),
        }),
        (Some(l), false, true) => Ok(Toolchain::Nightly {
            rustup: rustup.unwrap(),
            linker_dir: parent(&l),
        }),
        (linker, debian_ok, nightly_ok) => {
            let mut missing = Vec::new();
            if linker.is_none() {
                missing.push(format!(
                    "`bpf-linker` (not in PATH or ~/.cargo/bin; install: {})",
                    toolchain::bpf_linker_install_cmd()
                ));
            }
            if !debian_ok && !nightly_ok {
                missing.push(format!(
                    "a Rust toolchain that can target {BPF_TARGET}: either Debian's rustc-web + cargo-web + \
                     libstd-rust-web-dev-bpf (no {BPF_TARGET} core under /usr/lib/rustlib; install: apt-get install \
                     rustc-web cargo-web libstd-rust-web-dev-bpf) or rustup nightly with rust-src (install: rustup \
                     component add rust-src --toolchain nightly)"
                ));
            }
            bail!(
                "cannot build the eBPF program, missing {}.\n  Run `cargo xtask setup` as root to install the prerequisites \
                 (or set BATON_EBPF_OBJ=/path/to/prebuilt/baton-ebpf.o).",
                missing.join(" and ")
            )
        }
    }
}

fn parent(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Sanity check: a little-endian 64-bit ELF for EM_BPF.
fn check_bpf_elf(p: &Path) -> Result<()> {
    let data = fs::read(p).with_context(|| format!("reading eBPF object {}", p.display()))?;
    let ok = data.len() >= 20
        && data[..4] == *b"\x7fELF"
        && data[4] == 2 // ELFCLASS64
        && data[5] == 1 // little-endian
        && u16::from_le_bytes([data[18], data[19]]) == EM_BPF;
    if !ok {
        bail!("{} is not a little-endian BPF ELF object", p.display());
    }
    Ok(())
}
