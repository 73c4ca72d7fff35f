//! `cargo xtask vagrant-validate`: checks `vagrant/` without starting VMs.
//!
//! 1. `vagrant validate --ignore-provider` on `vagrant/Vagrantfile` (vagrant
//!    is installed from Debian when missing). `BATON_DEB` is the package
//!    of `cargo xtask deb` when it exists, else an empty placeholder (the
//!    file provisioner only checks that its source exists);
//! 2. the provisioning's configuration step: `vagrant/provision.sh` renders
//!    every node's `/etc/baton/baton.toml` from `vagrant/baton.toml.in` into
//!    a scratch root (`BATON_PROVISION_ROOT`), with one secret, and each is
//!    checked with `baton config check` (the debug agent).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn run(cmd: &mut Command) -> Result<String> {
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().with_context(|| format!("failed to start {cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

const NODES: u32 = 3;

pub fn validate() -> Result<()> {
    let root = super::workspace_root();
    let dir = root.join("vagrant");
    if super::setup::find_program("vagrant").is_none() {
        if unsafe { libc::geteuid() } != 0 {
            bail!("vagrant is not installed; run as root (it is installed from Debian: apt-get install vagrant)");
        }
        eprintln!("xtask: vagrant is missing: installing it (apt)");
        run(Command::new("apt-get").args(["install", "-y", "--no-install-recommends", "vagrant"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let target = super::target_dir()?;
    let scratch = target.join("vagrant-validate");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let version = env!("CARGO_PKG_VERSION");
    let built = target.join(format!("debian/baton_{version}_amd64.deb"));
    let deb: PathBuf = if built.exists() {
        built
    } else {
        let p = scratch.join("placeholder.deb");
        std::fs::write(&p, b"")?;
        eprintln!("xtask: {} does not exist (cargo xtask deb): validating with a placeholder", built.display());
        p
    };
    let out = run(Command::new("vagrant").args(["validate", "--ignore-provider"]).current_dir(&dir).env("BATON_DEB", &deb))?;
    if !out.contains("Vagrantfile validated successfully") {
        bail!("vagrant validate: {out}");
    }
    println!("vagrant: Vagrantfile validated ({} nodes)", NODES);

    // The provisioning's configuration step for every node.
    super::run_cargo(super::cargo().args(["build", "-p", "baton-agent"]))?;
    let baton = target.join("debug/baton");
    let secret = scratch.join("secret");
    run(Command::new(&baton).args(["keygen", "--out"]).arg(&secret))?;
    for id in 1..=NODES {
        let r = scratch.join(format!("node{id}"));
        std::fs::create_dir_all(r.join("tmp"))?;
        std::fs::copy(dir.join("baton.toml.in"), r.join("tmp/baton.toml.in"))?;
        std::fs::copy(&secret, r.join("tmp/baton.secret"))?;
        run(Command::new("sh")
            .arg(dir.join("provision.sh"))
            .args([id.to_string(), NODES.to_string(), "192.168.56".into(), "192.168.57".into(), "192.168.58".into()])
            .env("BATON_PROVISION_ROOT", &r)
            .env("RING0_IF", "eth1")
            .env("RING1_IF", "eth2"))?;
        let rendered = std::fs::read_to_string(r.join("etc/baton/baton.toml"))?;
        // The file names /etc/baton/secret, as on the VM; check it against the scratch root's.
        let check = r.join("check.toml");
        let secret_in_root = r.join("etc/baton/secret");
        std::fs::write(&check, rendered.replace("\"/etc/baton/secret\"", &format!("{:?}", secret_in_root.display().to_string())))?;
        let out = run(Command::new(&baton).args(["config", "check"]).arg(&check))?;
        let first = out.lines().next().unwrap_or_default();
        if !first.contains(&format!("node \"node{id}\" id {id}")) || !first.contains("2 peer(s)") || !first.contains("1 group(s)") {
            bail!("node{id}'s rendered configuration: {out}");
        }
        println!("vagrant: node{id}: {}", first.trim());
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// `cargo xtask vagrant-chroot-test`: the Vagrant provisioning (the .deb,
/// the config template, the key) proven without VMs, in three Debian 12
/// roots in network namespaces (vagrant/chroot-test.sh).
pub fn chroot_test() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("vagrant-chroot-test needs root (chroots, network namespaces, XDP)");
    }
    let deb = super::deb::build()?;
    let tarball = super::deb::root_tarball()?;
    run_provisioning_script("chroot-test.sh", "vagrant-chroot-test", &deb, &tarball)
}

/// The cached Debian 12 root with systemd as init (mmdebstrap minbase with
/// systemd, systemd-sysv, dbus, systemd-container for its systemd-nspawn,
/// iproute2, busybox), a tarball under `<target>/deb-check/`.
fn systemd_root_tarball() -> Result<PathBuf> {
    super::deb::root_tarball()?; // mmdebstrap installed, root checked
    let cache = super::target_dir()?.join("deb-check");
    let tarball = cache.join("bookworm-systemd.tar");
    if !tarball.exists() {
        let tmp = cache.join("bookworm-systemd.tar.tmp");
        run(Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                "--format=tar",
                "--include=systemd,systemd-sysv,dbus,systemd-container,iproute2,busybox,procps",
                "bookworm",
            ])
            .arg(&tmp)
            .arg("http://deb.debian.org/debian"))?;
        std::fs::rename(&tmp, &tarball)?;
    }
    Ok(tarball)
}

/// `cargo xtask systemd-test [--deb PATH]`: the package under a real
/// systemd, three machines (vagrant/systemd-test.sh).
pub fn systemd_test(deb: Option<PathBuf>) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("systemd-test needs root (systemd-nspawn, network namespaces, XDP)");
    }
    let deb = match deb {
        Some(p) if p.exists() => p,
        Some(p) => bail!("--deb {}: no such file", p.display()),
        None => super::deb::build()?,
    };
    let tarball = systemd_root_tarball()?;
    run_provisioning_script("systemd-test.sh", "systemd-test", &deb, &tarball)
}

/// Runs `vagrant/<script> DEB TARBALL WORK` with WORK under the target dir;
/// WORK (its logs) is kept when the script fails, removed when it passes.
fn run_provisioning_script(script: &str, work: &str, deb: &Path, tarball: &Path) -> Result<()> {
    let work = super::target_dir()?.join(work);
    let script = super::workspace_root().join("vagrant").join(script);
    eprintln!("xtask: running {}", script.display());
    let status = Command::new("bash").arg(&script).arg(deb).arg(tarball).arg(&work).status()?;
    if !status.success() {
        bail!("{} failed ({status}); logs in {}", script.display(), work.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
