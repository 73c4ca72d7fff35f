//! `cargo xtask bench fence`: fencing with SCSI-3 persistent reservations on
//! a real target, measured in the test VM (Debian 12's kernel under qemu, an
//! LIO iSCSI LU, one session per node: docs/vm.md), baton beside Debian's
//! `fence_scsi` on the same LU.
//!
//! baton: three agents, the `db` group (a writer appending sequence-numbered
//! O_DIRECT blocks to the LU) and a `[[disk]]` per node, as in the fencing
//! tests (tests/vm/scenarios/fencing-common.sh). `--kills` times the node
//! holding `db` crashes (`vm_crash`: SIGKILL of everything in its namespace,
//! guard included, so the others notice its silence); measured per kill:
//! - the fence time: the `ms` of the survivors' `fenced` event, the agent's
//!   own clock from the fencing level's notification of the forced leave to
//!   the acknowledgement once the victim's key is off the disk (PREEMPT AND
//!   ABORT done), of the survivor that did the preempt (`by_this_node`);
//! - the kill to `db`'s `service_up` on a survivor, and to that survivor's
//!   writer's first successful write;
//! - the dead node's key gone (sg_persist) and the blocks of its writer
//!   that appeared on the LU after its processes were gone (must be 0).
//!
//! Then the node starts again, rejoins and registers its key; `db` stays
//! where it moved, and the next kill takes the new holder.
//!
//! fence_scsi: after the agents stopped, in the same VM, Debian's
//! fence-agents `fence_scsi` (Python, shelling out to sg_persist and
//! sg_turs) registers the fencing node with `-o on` once, then `--kills`
//! times the victim's key is registered on its own disk and `fence_scsi -o
//! off -d <fencer's disk> -k <victim's key>` is timed from its start to its
//! exit, as Pacemaker's fencer would run it. Python is not in the VM image:
//! the interpreter (python3.11-minimal), its standard library
//! (libpython3.11-minimal, libpython3.11-stdlib, without test, idlelib,
//! tkinter, ensurepip and lib2to3), pycurl, pexpect and ptyprocess,
//! fence_scsi and fencing.py come from Debian's packages (`apt-get download`
//! and `dpkg -x`), byte-compiled by that interpreter, with the libraries
//! `ldd` lists from the host, as a tarball unpacked into the VM's memory (so
//! no timing reads 9p). It is cached under `<vm>/fence-scsi-<key>/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use baton_tests::vm::{self, Vm};

use crate::bench::{percentile, round1};

const SCENARIO: &str = include_str!("../../tests/vm/scenarios/bench-fence.sh");
const COMMON: &str = include_str!("../../tests/vm/scenarios/fencing-common.sh");

/// Debian's packages of fence_scsi and the Python it runs on.
const PY: &str = "python3.11";
const PACKAGES: &[&str] = &[
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3-pycurl",
    "python3-pexpect",
    "python3-ptyprocess",
    "fence-agents",
];
/// Parts of the standard library left out of the VM.
const STDLIB_LEFT_OUT: &[&str] = &["test", "idlelib", "tkinter", "ensurepip", "lib2to3"];
/// Where the libraries go in the tarball (moved into /lib/x86_64-linux-gnu
/// in the VM when the image lacks them).
const LIBS_DIR: &str = "opt/baton-fence-libs";
/// Bump when the bundle's layout changes (part of its cache key).
const BUNDLE_FORMAT: u32 = 1;

/// Options of `cargo xtask bench fence`.
#[derive(Debug, Clone)]
pub struct FenceOpts {
    /// Crashes of the node holding `db`; also the number of fence_scsi runs.
    pub kills: u32,
    /// Heartbeats in the VM.
    pub interval_ms: u64,
    pub misses: u32,
}

// ---------------------------------------------------------------- helpers

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FNV-1a 64 (a cache key stable across toolchains).
fn fnv(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.as_bytes().iter().chain([0xffu8].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// `KEY=VALUE` words of a line.
fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace().filter_map(|w| w.split_once('=')).collect()
}

// ---------------------------------------------------------------- the fence_scsi bundle

fn resolve() -> Result<Vec<(String, String)>> {
    let try_once = || -> Result<Vec<(String, String)>> {
        let c = baton_tests::vm::apt_candidates(&PACKAGES.iter().map(|p| p.to_string()).collect::<Vec<_>>()).map_err(anyhow::Error::msg)?;
        PACKAGES
            .iter()
            .map(|p| c.get(*p).map(|v| (p.to_string(), v.clone())).with_context(|| format!("no candidate version of {p} in the apt lists")))
            .collect()
    };
    match try_once() {
        Ok(v) => Ok(v),
        Err(e) => {
            eprintln!("bench fence: {e:#}; apt-get update");
            run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
            try_once()
        }
    }
}

/// The .deb of `name`=`version`, downloaded once into `<vm>/debs/` (where
/// the image keeps its own).
fn download(name: &str, version: &str) -> Result<PathBuf> {
    let dir = vm::vm_dir().join("debs").join(format!("{name}_{}", version.replace(':', "%3a")));
    let find = |d: &Path| -> Option<PathBuf> {
        fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb"))
    };
    if let Some(p) = find(&dir) {
        return Ok(p);
    }
    fs::create_dir_all(&dir)?;
    run(Command::new("apt-get")
        .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
        .arg(format!("{name}={version}"))
        .current_dir(&dir))?;
    find(&dir).with_context(|| format!("apt-get download {name}={version} left no .deb in {}", dir.display()))
}

/// `cp -a SRC/. DST/` (merging; symlinks, modes and mtimes kept).
fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    if !src.is_dir() {
        bail!("{} is missing", src.display());
    }
    fs::create_dir_all(dst)?;
    run(Command::new("cp").arg("-a").arg(format!("{}/.", src.display())).arg(dst))?;
    Ok(())
}

/// `ldd FILE`: soname → path, and the sonames it cannot find.
fn ldd(file: &Path) -> Result<(BTreeMap<String, PathBuf>, Vec<String>)> {
    let out = Command::new("ldd").arg(file).output().with_context(|| format!("ldd {}", file.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut found, mut missing) = (BTreeMap::new(), Vec::new());
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok((found, missing));
    }
    for line in text.lines() {
        let line = line.trim();
        let Some((name, rhs)) = line.split_once("=>") else { continue }; // linux-vdso, the loader
        let name = name.trim().to_string();
        if rhs.contains("not found") {
            missing.push(name);
            continue;
        }
        if let Some(p) = rhs.split_whitespace().next().filter(|p| p.starts_with('/')) {
            found.insert(name, PathBuf::from(p));
        }
    }
    Ok((found, missing))
}

/// Installs, on the host, the library packages the bundle's packages depend
/// on (once, when `ldd` cannot find a library).
fn install_library_deps() -> Result<()> {
    let out = run(Command::new("apt-cache").arg("depends").args(PACKAGES))?;
    let libs: BTreeSet<String> = out
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends: "))
        .map(str::trim)
        .filter(|d| d.starts_with("lib") && !d.starts_with('<') && !PACKAGES.contains(d))
        .map(str::to_string)
        .collect();
    eprintln!("bench fence: installing the libraries of fence_scsi's Python on the host: {}", libs.iter().cloned().collect::<Vec<_>>().join(" "));
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&libs)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// The fence_scsi tarball for the VM (built once per package versions) and
/// a one-line description.
fn fence_scsi_bundle() -> Result<(PathBuf, String)> {
    let pkgs = resolve()?;
    let versions: Vec<String> = pkgs.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut key_parts: Vec<&str> = versions.iter().map(String::as_str).collect();
    let fmt = BUNDLE_FORMAT.to_string();
    key_parts.push(&fmt);
    key_parts.extend(STDLIB_LEFT_OUT);
    let dir = vm::vm_dir().join(format!("fence-scsi-{}", fnv(&key_parts)));
    let tarball = dir.join("fence-scsi.tar.gz");
    let desc_file = dir.join("bundle.txt");
    if tarball.is_file() && desc_file.is_file() {
        return Ok((tarball, fs::read_to_string(&desc_file)?.trim().to_string()));
    }
    let t0 = Instant::now();
    let _ = fs::remove_dir_all(&dir);
    let work = dir.join("work");
    let x = work.join("x");
    let root = work.join("root");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&x)?;
    for (n, v) in &pkgs {
        let deb = download(n, v).with_context(|| format!("fence_scsi cannot run in the VM: Debian's package {n} could not be downloaded"))?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(x.join(n)))?;
    }
    let px = |p: &str, rel: &str| x.join(p).join(rel);
    // The interpreter, fence_scsi and fencing.py. In the VM /usr/bin and
    // /usr/sbin are links to /bin, so these go to /bin.
    fs::create_dir_all(root.join("bin"))?;
    fs::copy(px("python3.11-minimal", &format!("usr/bin/{PY}")), root.join(format!("bin/{PY}")))?;
    std::os::unix::fs::symlink(PY, root.join("bin/python3"))?;
    fs::copy(px("fence-agents", "usr/sbin/fence_scsi"), root.join("bin/fence_scsi"))?;
    fs::create_dir_all(root.join("usr/share/fence"))?;
    fs::copy(px("fence-agents", "usr/share/fence/fencing.py"), root.join("usr/share/fence/fencing.py"))?;
    // The standard library, less the parts left out; Debian's sitecustomize.
    let stdlib = root.join(format!("usr/lib/{PY}"));
    for p in ["libpython3.11-minimal", "libpython3.11-stdlib"] {
        copy_tree(&px(p, &format!("usr/lib/{PY}")), &stdlib)?;
    }
    for d in STDLIB_LEFT_OUT {
        let _ = fs::remove_dir_all(stdlib.join(d));
    }
    let etc = px("libpython3.11-minimal", &format!("etc/{PY}"));
    if etc.is_dir() {
        copy_tree(&etc, &root.join(format!("etc/{PY}")))?;
    }
    // pycurl, pexpect, ptyprocess.
    let dist = root.join("usr/lib/python3/dist-packages");
    for p in ["python3-pycurl", "python3-pexpect", "python3-ptyprocess"] {
        copy_tree(&px(p, "usr/lib/python3/dist-packages"), &dist)?;
    }
    // The libraries of the interpreter, pycurl and the extension modules.
    let mut objects = vec![root.join(format!("bin/{PY}"))];
    for d in [dist.clone(), stdlib.join("lib-dynload")] {
        for e in fs::read_dir(&d)?.flatten() {
            if e.file_name().to_string_lossy().ends_with(".so") {
                objects.push(e.path());
            }
        }
    }
    type Found = (BTreeMap<String, PathBuf>, BTreeMap<PathBuf, Vec<String>>);
    let scan = |objects: &[PathBuf]| -> Result<Found> {
        let mut libs = BTreeMap::new();
        let mut missing = BTreeMap::new();
        for o in objects {
            let (f, m) = ldd(o)?;
            libs.extend(f);
            if !m.is_empty() {
                missing.insert(o.clone(), m);
            }
        }
        Ok((libs, missing))
    };
    let (mut libs, mut missing) = scan(&objects)?;
    if !missing.is_empty() {
        install_library_deps()?;
        (libs, missing) = scan(&objects)?;
    }
    let mut notes = Vec::new();
    for (o, m) in &missing {
        let rel = o.strip_prefix(&root).unwrap_or(o).display().to_string();
        if o.parent() == Some(&stdlib.join("lib-dynload")) {
            // An extension module fence_scsi does not need: left out.
            notes.push(format!("{rel} left out (no {})", m.join(", ")));
            let _ = fs::remove_file(o);
        } else {
            bail!("fence_scsi cannot run in the VM: {rel} needs {} and the host has none (install the package that has it)", m.join(", "));
        }
    }
    fs::create_dir_all(root.join(LIBS_DIR))?;
    for (soname, path) in &libs {
        if soname.starts_with("ld-linux") {
            continue;
        }
        fs::copy(path, root.join(LIBS_DIR).join(soname)).with_context(|| format!("copying {}", path.display()))?;
    }
    // Byte-compiled by the packaged interpreter itself (Debian compiles at
    // installation), with the paths the VM will have.
    run(Command::new(root.join(format!("bin/{PY}")))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYTHONHOME", root.join("usr"))
        .args(["-m", "compileall", "-q", "-j", "0", "-s"])
        .arg(&root)
        .args(["-p", "/"])
        .arg(&stdlib)
        .arg(&dist)
        .arg(root.join("usr/share/fence")))
    .context("byte-compiling the bundle's Python")?;
    run(Command::new("tar")
        .args(["-czf"])
        .arg(&tarball)
        .args(["--owner=0", "--group=0", "-C"])
        .arg(&root)
        .args(["bin", "usr", "etc", "opt"]))?;
    let size = fs::metadata(&tarball)?.len();
    let desc = format!(
        "{} + {} libraries from the host ({:.1} MiB){}",
        versions.join(" "),
        libs.len(),
        size as f64 / 1048576.0,
        if notes.is_empty() { String::new() } else { format!("; {}", notes.join("; ")) }
    );
    fs::write(&desc_file, format!("{desc}\n"))?;
    let _ = fs::remove_dir_all(&work);
    eprintln!("bench fence: fence_scsi bundle built in {:.1} s: {}", t0.elapsed().as_secs_f64(), tarball.display());
    Ok((tarball, desc))
}

// ---------------------------------------------------------------- the bench

#[derive(Default)]
struct Results {
    fence_ms: Vec<f64>,
    kill_to_service_ms: Vec<f64>,
    kill_to_write_ms: Vec<f64>,
    kill_to_fenced_ms: Vec<f64>,
    writes_after_fence: u64,
    keys_left: u32,
    measured: u32,
    /// Kill number → causes.
    failed: BTreeMap<u32, Vec<String>>,
    /// Kills whose fence time is not a by_this_node one.
    not_own: u32,
    both_preempted: u32,
    /// peer_silent events beyond the two survivors' of each crash.
    spurious_silences: Option<i64>,
    scsi_ms: Vec<f64>,
    scsi_failed: Vec<String>,
}

fn parse(stdout: &str) -> Results {
    let mut r = Results::default();
    let num = |f: &BTreeMap<&str, &str>, k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("KILL ") {
            let f = fields(rest);
            r.measured += 1;
            let i: u32 = f.get("i").and_then(|v| v.parse().ok()).unwrap_or(0);
            match num(&f, "fence_ms") {
                Some(v) => r.fence_ms.push(v),
                None => r.failed.entry(i).or_default().push("no fence time".into()),
            }
            if let Some(v) = num(&f, "kill_to_service_ms") {
                r.kill_to_service_ms.push(v);
            }
            if let Some(v) = num(&f, "kill_to_write_ms") {
                r.kill_to_write_ms.push(v);
            }
            if let Some(v) = num(&f, "kill_to_fenced_ms") {
                r.kill_to_fenced_ms.push(v);
            }
            r.writes_after_fence += num(&f, "writes_after_fence").unwrap_or(0.0).max(0.0) as u64;
            if f.get("key_gone") != Some(&"1") {
                r.keys_left += 1;
            }
            if f.get("by_this_node") != Some(&"1") {
                r.not_own += 1;
            }
            if num(&f, "preempts").unwrap_or(0.0) >= 2.0 {
                r.both_preempted += 1;
            }
        } else if let Some(rest) = line.strip_prefix("FAILKILL ") {
            let f = fields(rest);
            let i: u32 = f.get("i").and_then(|v| v.parse().ok()).unwrap_or(0);
            r.failed.entry(i).or_default().push(f.get("cause").unwrap_or(&"?").replace('_', " "));
        } else if let Some(rest) = line.strip_prefix("SILENCES ") {
            let f = fields(rest);
            if let (Some(t), Some(e)) = (num(&f, "total"), num(&f, "expected")) {
                r.spurious_silences = Some(t as i64 - e as i64);
            }
        } else if let Some(rest) = line.strip_prefix("SCSI ") {
            let f = fields(rest);
            let ok = f.get("rc") == Some(&"0") && f.get("key_gone") == Some(&"1");
            match (ok, num(&f, "ms")) {
                (true, Some(ms)) => r.scsi_ms.push(ms),
                _ => r.scsi_failed.push(format!(
                    "run {}: rc {} key_gone {} {}",
                    f.get("i").unwrap_or(&"?"),
                    f.get("rc").unwrap_or(&"?"),
                    f.get("key_gone").unwrap_or(&"?"),
                    f.get("error").or(f.get("out")).unwrap_or(&"").replace('_', " ")
                )),
            }
        }
    }
    r
}

pub fn fence(o: &FenceOpts) -> Result<()> {
    if let Some(why) = vm::unavailable_reason() {
        bail!("the VM cannot run here: {why}");
    }
    let t0 = Instant::now();
    let (tarball, bundle) = fence_scsi_bundle()?;
    let tar = fs::read(&tarball)?;
    eprintln!(
        "bench fence: 3 agents in the test VM, heartbeats {} ms x {}; {} crashes of db's node, then {} fence_scsi runs\n  fence_scsi: {bundle}",
        o.interval_ms, o.misses, o.kills, o.kills
    );
    let vm = Vm::builder()
        .name("bench-fence")
        .nodes(3)
        .lun_mib(64)
        .file("fencing-common.sh", COMMON)
        .file("fence-scsi.tar.gz", tar)
        .env("BENCH_KILLS", o.kills)
        .env("BENCH_SCSI_RUNS", o.kills)
        .env("VM_INTERVAL_MS", o.interval_ms)
        .env("VM_MISSES", o.misses)
        .scenario(SCENARIO)
        .timeout(Duration::from_secs(600 + 150 * u64::from(o.kills)))
        .stream(true);
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| vm.run()))
        .map_err(|_| anyhow::anyhow!("the VM run failed (its console and run directory are printed above)"))?;
    let mut out = out;
    let wall = t0.elapsed();
    let r = parse(&out.stdout);
    let info: BTreeMap<&str, &str> = out.stdout.lines().filter_map(|l| l.strip_prefix("SCSIINFO ")).flat_map(fields).collect();

    // Kills that never produced a line (the scenario died) count as failures.
    let mut failed = r.failed.clone();
    let seen: BTreeSet<u32> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("KILL ").or_else(|| l.strip_prefix("FAILKILL ")))
        .filter_map(|l| fields(l).get("i").and_then(|v| v.parse().ok()))
        .collect();
    for i in 1..=o.kills {
        if !seen.contains(&i) {
            failed.entry(i).or_default().push(format!("not run (the scenario exited {})", out.status));
        }
    }
    let scsi_runs = r.scsi_ms.len() + r.scsi_failed.len();
    let mut scsi_failed = r.scsi_failed.clone();
    if scsi_runs < o.kills as usize {
        scsi_failed.push(format!("{} run(s) not made (the scenario exited {})", o.kills as usize - scsi_runs, out.status));
    }
    let scsi_failed_n = r.scsi_failed.len() + (o.kills as usize).saturating_sub(scsi_runs);

    let (bp50, bp99, bmax) = (percentile(&r.fence_ms, 50.0), percentile(&r.fence_ms, 99.0), percentile(&r.fence_ms, 100.0));
    let (sp50, sp99, smax) = (percentile(&r.scsi_ms, 50.0), percentile(&r.scsi_ms, 99.0), percentile(&r.scsi_ms, 100.0));
    let ratio = |a: f64, b: f64| if a > 0.0 && b.is_finite() { format!("{:.0}x", b / a) } else { "-".into() };
    println!();
    println!(
        "fencing, {} crashes of the node holding `db` (3 agents, heartbeats {} ms x {}) and {} fence_scsi runs, one qemu VM ({} {}, LIO iSCSI LU)",
        o.kills,
        o.interval_ms,
        o.misses,
        o.kills,
        out.kernel_release,
        out.accel.name()
    );
    println!("{:<40} {:>10} {:>12} {:>8}", "", "baton", "fence_scsi", "ratio");
    let row = |name: &str, a: f64, b: f64| println!("{name:<40} {a:>10.1} {b:>12.1} {:>8}", ratio(a, b));
    row("fence p50 (ms)", bp50, sp50);
    row("fence p99 (ms)", bp99, sp99);
    row("fence max (ms)", bmax, smax);
    let brow = |name: &str, a: f64| println!("{name:<40} {a:>10.1} {:>12}", "-");
    brow("kill to fenced p50 (ms)", percentile(&r.kill_to_fenced_ms, 50.0));
    brow("kill to fenced p99 (ms)", percentile(&r.kill_to_fenced_ms, 99.0));
    brow("kill to service p50 (ms)", percentile(&r.kill_to_service_ms, 50.0));
    brow("kill to service p99 (ms)", percentile(&r.kill_to_service_ms, 99.0));
    brow("kill to first write p50 (ms)", percentile(&r.kill_to_write_ms, 50.0));
    brow("kill to first write p99 (ms)", percentile(&r.kill_to_write_ms, 99.0));
    println!("{:<40} {:>10} {:>12}", "writes after fence", r.writes_after_fence, "-");
    println!("{:<40} {:>10} {:>12}", "victim's key left after fence", r.keys_left, "-");
    let spurious = r.spurious_silences.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    println!("{:<40} {:>10} {:>12}", "false failure detections (peer_silent)", spurious, "-");
    println!("{:<40} {:>10} {:>12}", "runs measured / asked", format!("{}/{}", r.fence_ms.len(), o.kills), format!("{}/{}", r.scsi_ms.len(), o.kills));
    println!("{:<40} {:>10} {:>12}", "failed", failed.len(), scsi_failed_n);
    println!(
        "(baton: the survivors' `fenced` event, fencing level notified -> victim's key off the disk, the survivor that preempted; \
         kill to service/write: SIGKILL of the node -> `db` service_up / its writer's first ok write on a survivor. \
         fence_scsi: `fence_scsi -o off -d <disk> -k <key>` start to exit, Python {}, fence-agents {})",
        info.get("python").unwrap_or(&"?"),
        info.get("fence_scsi").unwrap_or(&"?")
    );
    if let (Some(py), Some(imp), Some(sg), Some(tur)) =
        (info.get("python_start_ms"), info.get("import_fencing_ms"), info.get("sg_persist_ms"), info.get("sg_turs_ms"))
    {
        println!(
            "(fence_scsi's parts in this VM: python3 -c pass {py} ms, python3 + import fencing {imp} ms, one sg_persist -i -k {sg} ms, one sg_turs {tur} ms; \
             `-o off` runs 8 sg_turs and 6 sg_persist)"
        );
    }
    if r.both_preempted > 0 {
        println!("note: in {} kill(s) both survivors completed their own preempt (by_this_node on both); the faster is counted", r.both_preempted);
    }
    if r.not_own > 0 {
        println!("note: in {} kill(s) no survivor logged by_this_node; the fastest fenced event is counted", r.not_own);
    }
    for (i, causes) in &failed {
        println!("failed: kill {i}: {}", causes.join("; "));
    }
    for c in &scsi_failed {
        println!("failed: fence_scsi {c}");
    }
    let false_detections = r.spurious_silences.unwrap_or(0).max(0);
    let keep = !failed.is_empty() || scsi_failed_n > 0 || out.status != 0 || r.writes_after_fence > 0 || false_detections > 0;
    if out.status != 0 {
        println!("the scenario exited {}: {}", out.status, baton_tests::vm::tail(&out.stderr, 5).replace('\n', " | "));
    }
    if keep {
        out.keep();
        println!("run directory kept: {} (stdout, serial.log, out/fail-*.txt, out/baton-vm/nodeN/)", out.run_dir.display());
    }
    println!("wall time {:.0} s (VM {:.0} s)", wall.as_secs_f64(), out.total.as_secs_f64());
    let v = |x: f64| serde_json::Value::from(round1(x)).to_string();
    let mut causes: Vec<String> = failed.iter().map(|(i, c)| format!("kill {i}: {}", c.join("; "))).chain(scsi_failed.iter().map(|c| format!("fence_scsi {c}"))).collect();
    if false_detections > 0 {
        causes.push(format!("{false_detections} peer_silent event(s) beyond the crashes' (false failure detections)"));
    }
    let pairs: Vec<(&str, String)> = vec![
        ("baton_fence_ms_p50", v(bp50)),
        ("baton_fence_ms_p99", v(bp99)),
        ("fence_scsi_ms_p50", v(sp50)),
        ("fence_scsi_ms_p99", v(sp99)),
        ("baton_kill_to_service_ms_p99", v(percentile(&r.kill_to_service_ms, 99.0))),
        ("writes_after_fence", r.writes_after_fence.to_string()),
        ("runs", o.kills.to_string()),
        ("baton_fence_ms_max", v(bmax)),
        ("fence_scsi_ms_max", v(smax)),
        ("baton_kill_to_service_ms_p50", v(percentile(&r.kill_to_service_ms, 50.0))),
        ("baton_kill_to_write_ms_p50", v(percentile(&r.kill_to_write_ms, 50.0))),
        ("baton_kill_to_write_ms_p99", v(percentile(&r.kill_to_write_ms, 99.0))),
        ("baton_kill_to_fenced_ms_p50", v(percentile(&r.kill_to_fenced_ms, 50.0))),
        ("baton_runs_measured", r.fence_ms.len().to_string()),
        ("fence_scsi_runs_measured", r.scsi_ms.len().to_string()),
        ("failed", failed.len().to_string()),
        ("fence_scsi_failed", scsi_failed_n.to_string()),
        ("keys_left_after_fence", r.keys_left.to_string()),
        ("false_detections", r.spurious_silences.map(|n| n.to_string()).unwrap_or_else(|| "null".into())),
        ("interval_ms", o.interval_ms.to_string()),
        ("misses", o.misses.to_string()),
        ("accel", serde_json::Value::from(out.accel.name()).to_string()),
        ("failures", serde_json::Value::from(causes).to_string()),
    ];
    let json = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",");
    println!("{{{json}}}");
    if keep {
        bail!(
            "{} kill(s) and {} fence_scsi run(s) failed, {} write(s) after a fence, {} false failure detection(s), scenario exit status {}; run directory {}",
            failed.len(),
            scsi_failed_n,
            r.writes_after_fence,
            false_detections,
            out.status,
            out.run_dir.display()
        );
    }
    Ok(())
}
