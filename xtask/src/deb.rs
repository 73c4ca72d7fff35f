//! `cargo xtask deb`: the Debian package `baton_<version>_amd64.deb`
//! (cargo-deb; metadata in agent/Cargo.toml, `[package.metadata.deb]`).
//!
//! 1. cargo-deb is installed (`cargo install cargo-deb --locked`) when it is
//!    missing: only this task needs it;
//! 2. the release agent is built (the eBPF object embedded);
//! 3. `baton generate-assets` writes the man pages (gzipped here) and the
//!    bash/zsh/fish completions into `packaging/generated/`;
//! 4. `cargo deb --no-build` packs the binary, `packaging/baton.service`,
//!    the example `/etc/baton/baton.toml` (a conffile), the man pages, the
//!    completions and the docs into `<target>/debian/`.
//!
//! `--check` then proves the package: its control fields and file list
//! (`dpkg-deb -I`, `-c`), and an install into a throwaway Debian 12 root
//! made by mmdebstrap (installed when missing; the root is cached as a
//! tarball under `<target>/deb-check/`): `dpkg -i`, `baton --version`,
//! `man -w`-style presence of the pages, `baton keygen`,
//! `baton config check /etc/baton/baton.toml`, then `dpkg --purge`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The cargo-deb release this task installs when none is there.
const CARGO_DEB_VERSION: &str = "3.8.0";

fn run(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn cargo_deb_installed() -> bool {
    super::cargo().args(["deb", "--version"]).output().is_ok_and(|o| o.status.success())
}

/// Installs cargo-deb when `cargo deb` is not there.
pub fn ensure_cargo_deb() -> Result<()> {
    if cargo_deb_installed() {
        return Ok(());
    }
    eprintln!("xtask: cargo-deb is missing: installing cargo-deb {CARGO_DEB_VERSION}");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "cargo-deb", "--locked", "--version", CARGO_DEB_VERSION])
        .status()
        .context("running cargo install cargo-deb")?;
    if !status.success() || !cargo_deb_installed() {
        bail!("installing cargo-deb failed ({status}); install it by hand: cargo install cargo-deb --locked");
    }
    Ok(())
}

/// Builds the package; returns its path.
pub fn build() -> Result<PathBuf> {
    super::setup::check()?;
    ensure_cargo_deb()?;
    super::run_cargo(super::cargo().args(["build", "--release", "-p", "baton-agent"]))?;
    let target = super::target_dir()?;
    let bin = target.join("release/baton");
    let generated = super::workspace_root().join("packaging/generated");
    let _ = std::fs::remove_dir_all(&generated);
    run(Command::new(&bin).arg("generate-assets").arg("--out").arg(&generated))?;
    // Debian ships man pages gzipped (-n: no name or time stamp, reproducible).
    for e in std::fs::read_dir(generated.join("man"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "1") {
            run(Command::new("gzip").args(["-9n", "-f"]).arg(&p))?;
        }
    }
    let out_dir = target.join("debian");
    std::fs::create_dir_all(&out_dir)?;
    let stdout = run(super::cargo().args(["deb", "-p", "baton-agent", "--no-build", "--strip", "--output"]).arg(&out_dir))?;
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    println!("{}", deb.display());
    Ok(deb)
}

/// What the package must hold (paths as `dpkg-deb -c` prints them, without
/// the leading `.`).
const EXPECTED: &[&str] = &[
    "/usr/bin/baton",
    "/usr/lib/systemd/system/baton.service",
    "/etc/baton/baton.toml",
    "/usr/share/man/man1/baton.1.gz",
    "/usr/share/man/man1/baton-run.1.gz",
    "/usr/share/man/man1/baton-status.1.gz",
    "/usr/share/man/man1/baton-config-check.1.gz",
    "/usr/share/bash-completion/completions/baton",
    "/usr/share/zsh/vendor-completions/_baton",
    "/usr/share/fish/vendor_completions.d/baton.fish",
    "/usr/share/doc/baton/README.md",
    "/usr/share/doc/baton/operations.md",
    "/usr/share/doc/baton/copyright",
];

/// `--check`: the package's fields and files, and an install into a
/// throwaway Debian 12 root.
pub fn check(deb: &Path) -> Result<()> {
    let name = deb.file_name().unwrap().to_string_lossy().to_string();
    let version = env!("CARGO_PKG_VERSION");
    if name != format!("baton_{version}_amd64.deb") {
        bail!("the package is named {name}, not baton_{version}_amd64.deb");
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(deb))?;
    for want in ["Package: baton", &format!("Version: {version}"), "Architecture: amd64", "Depends: libc6"] {
        if !info.contains(want) {
            bail!("dpkg-deb -I: no {want:?}:\n{info}");
        }
    }
    let conffiles = run(Command::new("dpkg-deb").args(["-f"]).arg(deb).arg("Conffiles"))
        .unwrap_or_default();
    let list = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let files: Vec<String> = list.lines().filter_map(|l| l.split_whitespace().nth(5)).map(|p| p.trim_start_matches('.').to_string()).collect();
    let missing: Vec<&&str> = EXPECTED.iter().filter(|e| !files.iter().any(|f| f == *e)).collect();
    if !missing.is_empty() {
        bail!("the package lacks {missing:?}; it holds:\n{list}");
    }
    let ctrl = tempdir("ctrl")?;
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl))?;
    let conf = std::fs::read_to_string(ctrl.join("conffiles")).unwrap_or(conffiles);
    if !conf.lines().any(|l| l.trim() == "/etc/baton/baton.toml") {
        bail!("/etc/baton/baton.toml is not a conffile: {conf:?}");
    }
    let _ = std::fs::remove_dir_all(&ctrl);
    println!("deb: {name}: control fields, {} files, conffile /etc/baton/baton.toml: ok", files.len());

    // A throwaway Debian 12 root.
    let root = throwaway_root()?;
    let res = install_in(&root, deb);
    let _ = std::fs::remove_dir_all(&root);
    res
}

fn tempdir(tag: &str) -> Result<PathBuf> {
    let d = super::target_dir()?.join("deb-check").join(format!("{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// A minimal Debian 12 root (mmdebstrap minbase, cached as a tarball),
/// extracted fresh for each check.
fn throwaway_root() -> Result<PathBuf> {
    let tarball = root_tarball()?;
    let root = tempdir("root")?;
    run(Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(&root))?;
    Ok(root)
}

/// The cached Debian 12 minbase root tarball (made by mmdebstrap, installed
/// when missing).
pub fn root_tarball() -> Result<PathBuf> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("`cargo xtask deb --check` installs the package into a chroot: run it as root");
    }
    if super::setup::find_program("mmdebstrap").is_none() {
        eprintln!("xtask: mmdebstrap is missing: installing it (apt)");
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "mmdebstrap"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let cache = super::target_dir()?.join("deb-check");
    std::fs::create_dir_all(&cache)?;
    let tarball = cache.join("bookworm-minbase.tar");
    if !tarball.exists() {
        let tmp = cache.join("bookworm-minbase.tar.tmp");
        // man-db: `man -w` finds the pages as installed.
        run(Command::new("mmdebstrap")
            .args(["--variant=minbase", "--format=tar", "--include=man-db", "bookworm"])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian"))?;
        std::fs::rename(&tmp, &tarball)?;
    }
    Ok(tarball)
}

fn chroot(root: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("chroot").arg(root).args(args).env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
}

fn install_in(root: &Path, deb: &Path) -> Result<()> {
    std::fs::copy(deb, root.join("tmp/baton.deb"))?;
    chroot(root, &["dpkg", "-i", "/tmp/baton.deb"])?;
    let version = chroot(root, &["baton", "--version"])?;
    if version.trim() != format!("baton {}", env!("CARGO_PKG_VERSION")) {
        bail!("baton --version in the root printed {version:?}");
    }
    println!("deb: installed in a Debian 12 root: {}", version.trim());
    let man = chroot(root, &["man", "-w", "baton-run"])?;
    if !man.contains("/usr/share/man/man1/baton-run.1.gz") {
        bail!("man -w baton-run: {man:?}");
    }
    // The example configuration is refused until the secret exists (one
    // clear message), then passes.
    let before = Command::new("chroot").arg(root).args(["baton", "config", "check", "/etc/baton/baton.toml"]).output()?;
    let err = String::from_utf8_lossy(&before.stderr).to_string();
    if before.status.code() != Some(78) || !err.contains("secret file /etc/baton/secret") {
        bail!("config check without a secret: {} {err}", before.status);
    }
    chroot(root, &["baton", "keygen", "--out", "/etc/baton/secret"])?;
    let ok = Command::new("chroot").arg(root).args(["baton", "config", "check", "/etc/baton/baton.toml"]).output()?;
    if !ok.status.success() {
        bail!("baton config check /etc/baton/baton.toml after keygen: {}", String::from_utf8_lossy(&ok.stderr));
    }
    println!("deb: {}", String::from_utf8_lossy(&ok.stdout).trim());
    println!("deb: baton config check without a secret: exit 78, {}", err.trim());
    chroot(root, &["dpkg", "--purge", "baton"])?;
    if root.join("usr/bin/baton").exists() || root.join("etc/baton/baton.toml").exists() {
        bail!("dpkg --purge left the binary or the conffile");
    }
    println!("deb: purged cleanly");
    Ok(())
}
