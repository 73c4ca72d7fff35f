//! A qemu VM on Debian 12's own kernel with a real LIO iSCSI target inside:
//! for what the host kernel cannot test (SCSI-3 persistent reservations; it
//! has no SCSI and no loadable modules) and for the datapath on the kernel
//! the README promises.
//!
//! The image is built from Debian packages (`apt-get download` + `dpkg -x`):
//! the kernel `linux-image-amd64` depends on and the modules the VM needs
//! (decompressed, with their dependencies), busybox-static, open-iscsi's
//! `iscsistart`, sg3-utils, jq, plus the host's iproute2 (`ip`, `tc`), bash,
//! util-linux (`nsenter`, `chrt`), coreutils' `dd` and bpftool, each with the
//! libraries `ldd` lists. It is cached under `<target>/vm/image-<key>/`, keyed
//! by the package versions and every other input, and the `baton` binary
//! under test goes into a second cpio archive appended to it (cached by the
//! binary's path, size and mtime), so a rebuilt agent costs no image rebuild.
//!
//! Inside, `tests/vm/init` configures the target (one fileio LU on tmpfs, a
//! portal per node at 127.0.0.N:3260), logs in once per node under its own
//! initiator IQN (so every node has its own I_T nexus and its own `/dev/sdX`, linked as
//! `/dev/baton/nodeN` and `/dev/baton/nodeN.sg`), runs the scenario and powers
//! off. The host and the VM share a directory over virtio-9p: the scenario,
//! its environment and input files go in; its stdout, stderr, exit status and
//! the files it writes to `$VM_OUT` come back. `tests/vm/lib.sh` (at `$VM_LIB`
//! in the VM) has functions to run agents in network namespaces. See
//! docs/vm.md.
//!
//! ```no_run
//! use baton_tests::vm::Vm;
//! let out = Vm::builder().nodes(3).scenario("uname -r; sg_persist -k $(readlink -f /dev/baton/node1)").run();
//! out.assert_success();
//! assert!(out.stdout.starts_with("6.1."));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// PID 1 of the VM.
pub const INIT: &str = include_str!("../vm/init");
/// The scenario library, at `$VM_LIB` (/usr/lib/baton-vm/lib.sh) in the VM.
pub const LIB_SH: &str = include_str!("../vm/lib.sh");

/// Modules every image loads (with their dependencies, in this order): the
/// 9p share, the LIO target with fileio and iSCSI, the iSCSI initiator, disks
/// and sg nodes, and what the agents' datapath needs (veth, bridge, clsact and
/// cls_bpf for the TC program).
pub const BASE_MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "configfs",
    "crc32c_generic",
    "target_core_mod",
    "target_core_file",
    "iscsi_target_mod",
    "scsi_transport_iscsi",
    "libiscsi",
    "iscsi_tcp",
    "sd_mod",
    "sg",
    "veth",
    "bridge",
    "dummy",
    "sch_ingress",
    "cls_bpf",
];

/// Tools copied from the host (with their libraries). Missing optional ones
/// are left out.
const HOST_TOOLS: &[(&str, bool)] = &[
    ("ip", true),
    ("tc", true),
    ("bash", true),
    ("nsenter", true),
    ("chrt", true),
    ("dd", true),
    ("bpftool", false),
];

/// Target and initiator names (the initiator of node N is the prefix + N).
pub const TARGET_IQN: &str = "iqn.2003-01.org.baton:vm-lun";
pub const INITIATOR_PREFIX: &str = "iqn.2003-01.org.baton:node";

/// Bump when the way an image is assembled changes (it is part of the key).
const FORMAT: u32 = 2;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// A boot whose console stays silent this long before the init's first line
/// is taken as hung (a normal TCG boot prints something every few seconds;
/// the longest quiet step, before the kernel's first line, took 16-21 s
/// under TCG at load 12 on this 2-core machine).
const BOOT_STALL: Duration = Duration::from_secs(120);
/// Boots tried before a run gives up on a VM that hangs before its init.
const BOOT_ATTEMPTS: u32 = 3;

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------- small helpers

/// FNV-1a 64, stable across toolchains (the cache key must be).
#[derive(Clone)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(&mut self, bytes: &[u8]) -> &mut Fnv {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
        self
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(cmd: &mut Command) -> String {
    run_cmd(cmd).unwrap_or_else(|e| panic!("vm: {e}"))
}

/// `name` in PATH (plus the sbin directories a non-root PATH may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn program(name: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| panic!("vm: `{name}` not found in PATH (run `cargo xtask setup`)"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An exclusive lock on `path` held until drop (flock).
struct FileLock(#[allow(dead_code)] File);

impl FileLock {
    fn new(path: &Path) -> FileLock {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("vm: {}: {e}", path.display()));
        // SAFETY: a valid descriptor; flock has no other preconditions.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            panic!("vm: flock {}: {}", path.display(), io::Error::last_os_error());
        }
        FileLock(f)
    }
}

fn file_stamp(p: &Path) -> String {
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("vm: {}: {e}", p.display()));
    format!("{}:{}:{}", p.display(), m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000)
}

/// The tail of `text`: its last `n` lines.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn read_lossy(p: &Path) -> String {
    fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

// ---------------------------------------------------------------- where

/// The VM cache: `$BATON_VM_DIR`, else `<cargo target dir>/vm`.
pub fn vm_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BATON_VM_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    target_dir().join("vm")
}

/// The cargo target directory: `$CARGO_TARGET_DIR`, else found from the
/// running executable (`<target>/<profile>/deps/<test>` or
/// `<target>/<profile>/<bin>`), else `target` under the workspace.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        return if d.is_absolute() { d } else { workspace_root().join(d) };
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        if dir.as_ref().is_some_and(|d| d.ends_with("deps")) {
            dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
        }
        // <target>/<profile>: the profile directory has a `.fingerprint`.
        if let Some(profile) = dir.filter(|d| d.join(".fingerprint").is_dir()) {
            if let Some(t) = profile.parent() {
                return t.to_path_buf();
            }
        }
    }
    workspace_root().join("target")
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

// ---------------------------------------------------------------- can it run?

/// Why VM tests cannot run here, or `None` when they can: qemu and the
/// image's tools present, and Debian's packages reachable (or an image
/// cached).
pub fn unavailable_reason() -> Option<String> {
    for p in ["qemu-system-x86_64", "apt-get", "apt-cache", "dpkg", "depmod", "modprobe", "xz", "ldd"] {
        if find_program(p).is_none() {
            return Some(format!("`{p}` not found (`cargo xtask setup` installs qemu-system-x86, kmod, xz-utils)"));
        }
    }
    let cached = fs::read_dir(vm_dir())
        .map(|rd| rd.flatten().any(|e| e.file_name().to_string_lossy().starts_with("image-") && e.path().join("manifest.json").is_file()))
        .unwrap_or(false);
    if !cached && kernel_package().is_err() && !is_root() {
        return Some("Debian's package lists have no linux-image-amd64 (run `apt-get update` as root)".into());
    }
    None
}

/// True when VM tests can run. Otherwise prints a loud SKIPPED and returns
/// false, or panics under CI=true (where a skip is a failure).
pub fn vm_tests_possible() -> bool {
    match unavailable_reason() {
        None => true,
        Some(why) if crate::must_run() => panic!("VM tests cannot run here ({why}) and CI=true forbids skipping"),
        Some(why) => {
            eprintln!("\n*** SKIPPED: VM test: {why} ***\n");
            crate::note_skipped(&format!("VM test: {why}"));
            false
        }
    }
}

// ---------------------------------------------------------------- packages

/// `apt-cache depends` of several packages: package → its dependencies.
fn apt_depends(pkgs: &[&str]) -> Result<BTreeMap<String, Vec<String>>, String> {
    let out = run_cmd(Command::new("apt-cache").arg("depends").args(pkgs))?;
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cur = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            cur = Some(line.trim().to_string());
            map.entry(line.trim().to_string()).or_default();
        } else if let (Some(c), Some(d)) = (&cur, line.trim().trim_start_matches('|').strip_prefix("Depends: ")) {
            if !d.starts_with('<') {
                map.get_mut(c).unwrap().push(d.trim().to_string());
            }
        }
    }
    Ok(map)
}

/// `apt-cache policy` of several packages: package → candidate version
/// (packages without a candidate are left out).
pub fn apt_candidates(pkgs: &[String]) -> Result<BTreeMap<String, String>, String> {
    let out = run_cmd(Command::new("apt-cache").arg("policy").args(pkgs))?;
    let mut map = BTreeMap::new();
    let mut cur = None;
    for line in out.lines() {
        if !line.starts_with(' ') {
            cur = line.trim().strip_suffix(':').map(str::to_string);
        } else if let (Some(c), Some(v)) = (&cur, line.trim().strip_prefix("Candidate:")) {
            let v = v.trim();
            if !v.is_empty() && v != "(none)" {
                map.insert(c.clone(), v.to_string());
            }
        }
    }
    Ok(map)
}

fn dep_with_prefix(deps: &BTreeMap<String, Vec<String>>, pkg: &str, prefix: &str) -> Result<String, String> {
    deps.get(pkg)
        .and_then(|d| d.iter().find(|d| d.starts_with(prefix)))
        .cloned()
        .ok_or_else(|| format!("{pkg} has no dependency named {prefix}* in the apt lists"))
}

/// The kernel package `linux-image-amd64` depends on, e.g. linux-image-6.1.0-57-amd64.
fn kernel_package() -> Result<String, String> {
    dep_with_prefix(&apt_depends(&["linux-image-amd64"])?, "linux-image-amd64", "linux-image-")
}

/// Every package of the image with its candidate version, the kernel first.
fn resolve_packages() -> Result<Vec<(String, String)>, String> {
    let deps = apt_depends(&["linux-image-amd64", "open-iscsi", "sg3-utils", "jq"])?;
    let libjq = dep_with_prefix(&deps, "jq", "libjq")?;
    let libonig = dep_with_prefix(&apt_depends(&[&libjq])?, &libjq, "libonig")?;
    let names = vec![
        dep_with_prefix(&deps, "linux-image-amd64", "linux-image-")?,
        "busybox-static".into(),
        "open-iscsi".into(),
        "sg3-utils".into(),
        "jq".into(),
        dep_with_prefix(&deps, "open-iscsi", "libopeniscsiusr")?,
        dep_with_prefix(&deps, "sg3-utils", "libsgutils2")?,
        libjq,
        libonig,
    ];
    let versions = apt_candidates(&names)?;
    names
        .into_iter()
        .map(|n| versions.get(&n).cloned().map(|v| (n.clone(), v)).ok_or_else(|| format!("no candidate version of {n} in the apt lists")))
        .collect()
}

/// The apt lists' state: resolving the packages again gives the same
/// answer while it is unchanged (apt-cache takes ~0.4 s a call).
fn apt_lists_stamp() -> String {
    ["/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list.d", "/etc/apt/preferences.d"]
        .iter()
        .map(|p| fs::metadata(p).map(|m| format!("{p}:{}.{}", m.mtime(), m.mtime_nsec())).unwrap_or_default())
        .collect::<Vec<_>>()
        .join(" ")
}

static APT_UPDATED: OnceLock<()> = OnceLock::new();

fn apt_update() {
    APT_UPDATED.get_or_init(|| {
        if !is_root() {
            panic!("vm: Debian's package lists are missing or stale and `apt-get update` needs root");
        }
        eprintln!("vm: apt-get update");
        must(Command::new("apt-get").arg("update").arg("-q").env("DEBIAN_FRONTEND", "noninteractive"));
    });
}

/// Resolves the packages, with one `apt-get update` when the lists lack
/// them; cached in `<vm>/packages` while the apt lists are unchanged.
fn packages() -> Vec<(String, String)> {
    let cache = vm_dir().join("packages");
    let stamp = apt_lists_stamp();
    if let Ok(text) = fs::read_to_string(&cache) {
        let mut lines = text.lines();
        if lines.next() == Some(stamp.as_str()) {
            let v: Vec<(String, String)> = lines.filter_map(|l| l.split_once(' ')).map(|(n, v)| (n.to_string(), v.to_string())).collect();
            if !v.is_empty() {
                return v;
            }
        }
    }
    let v = resolve_packages().unwrap_or_else(|e| {
        eprintln!("vm: {e}; updating the package lists");
        apt_update();
        resolve_packages().unwrap_or_else(|e| panic!("vm: {e}"))
    });
    let text: String = v.iter().map(|(n, ver)| format!("{n} {ver}\n")).collect();
    let _ = fs::write(&cache, format!("{}\n{text}", apt_lists_stamp()));
    v
}

/// The .deb of `name`=`version`, downloaded once into `<vm>/debs/`.
fn download(name: &str, version: &str) -> Result<PathBuf, String> {
    let dir = vm_dir().join("debs").join(format!("{name}_{}", version.replace(':', "%3a")));
    let find = |d: &Path| -> Option<PathBuf> {
        fs::read_dir(d).ok()?.flatten().map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb"))
    };
    if let Some(p) = find(&dir) {
        return Ok(p);
    }
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    run_cmd(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{name}={version}"))
            .current_dir(&dir),
    )?;
    find(&dir).ok_or_else(|| format!("apt-get download {name}={version} left no .deb in {}", dir.display()))
}

// ---------------------------------------------------------------- cpio

/// Writes `root` as a newc cpio archive (what the kernel unpacks into its
/// initramfs): owner root, mtime 0, entries sorted.
fn write_cpio(root: &Path, out: &Path) -> io::Result<()> {
    fn walk(root: &Path, dir: &Path, acc: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            acc.push(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type()?.is_dir() {
                walk(root, &p, acc)?;
            }
        }
        Ok(())
    }
    struct W<T: Write> {
        w: T,
        off: u64,
    }
    impl<T: Write> W<T> {
        fn put(&mut self, b: &[u8]) -> io::Result<()> {
            self.w.write_all(b)?;
            self.off += b.len() as u64;
            Ok(())
        }
        fn pad(&mut self) -> io::Result<()> {
            let n = (4 - self.off % 4) % 4;
            self.put(&[0u8; 3][..n as usize])
        }
        fn header(&mut self, ino: u32, mode: u32, nlink: u32, size: u64, name: &str) -> io::Result<()> {
            let size = u32::try_from(size).map_err(|_| io::Error::other(format!("{name}: too big for cpio")))?;
            let h = format!(
                "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                name.len() + 1,
                0
            );
            self.put(h.as_bytes())?;
            self.put(name.as_bytes())?;
            self.put(&[0])?;
            self.pad()
        }
    }
    let mut paths = Vec::new();
    walk(root, root, &mut paths)?;
    let mut w = W { w: BufWriter::new(File::create(out)?), off: 0 };
    for (i, rel) in paths.iter().enumerate() {
        let p = root.join(rel);
        let m = fs::symlink_metadata(&p)?;
        let name = rel.to_str().ok_or_else(|| io::Error::other(format!("{}: not UTF-8", rel.display())))?;
        let ino = i as u32 + 1;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&p)?;
            let t = target.as_os_str().as_encoded_bytes();
            w.header(ino, 0o120777, 1, t.len() as u64, name)?;
            w.put(t)?;
        } else if ft.is_dir() {
            w.header(ino, 0o040000 | (m.mode() & 0o7777), 2, 0, name)?;
        } else if ft.is_file() {
            w.header(ino, 0o100000 | (m.mode() & 0o7777), 1, m.len(), name)?;
            let n = io::copy(&mut File::open(&p)?, &mut w.w)?;
            if n != m.len() {
                return Err(io::Error::other(format!("{}: changed while archived", p.display())));
            }
            w.off += n;
        } else {
            continue;
        }
        w.pad()?;
    }
    w.header(0, 0, 1, 0, "TRAILER!!!")?;
    w.w.flush()
}

// ---------------------------------------------------------------- staging

/// A root file system being assembled.
struct Stage {
    root: PathBuf,
    /// LD_LIBRARY_PATH for `ldd` of packaged binaries (their own libraries).
    lib_path: String,
    libs_done: BTreeSet<String>,
}

impl Stage {
    fn new(root: PathBuf, lib_path: String) -> Stage {
        fs::create_dir_all(&root).unwrap();
        Stage { root, lib_path, libs_done: BTreeSet::new() }
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel)).unwrap();
    }

    fn symlink(&self, target: &str, rel: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        std::os::unix::fs::symlink(target, &p).unwrap_or_else(|e| panic!("vm: symlink {}: {e}", p.display()));
    }

    fn write(&self, rel: &str, text: &str, mode: u32) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Copies `src` (following links) to `rel`, executable.
    fn copy(&self, src: &Path, rel: &str) {
        let p = self.root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        fs::copy(src, &p).unwrap_or_else(|e| panic!("vm: copy {} -> {}: {e}", src.display(), p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Copies a binary into /bin and the libraries `ldd` lists for it.
    fn binary(&mut self, src: &Path, name: &str) {
        self.copy(src, &format!("bin/{name}"));
        self.libraries(src);
    }

    fn libraries(&mut self, bin: &Path) {
        let out = Command::new("ldd").arg(bin).env("LD_LIBRARY_PATH", &self.lib_path).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.contains("not a dynamic executable") {
            return; // static
        }
        for line in text.lines() {
            let line = line.trim();
            if line.contains("not found") {
                panic!("vm: {}: library {line} (install the package that has it)", bin.display());
            }
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next().unwrap_or(""),
                None => line.split_whitespace().next().unwrap_or(""),
            };
            if !path.starts_with('/') {
                continue; // linux-vdso
            }
            let src = Path::new(path);
            let file = src.file_name().unwrap().to_string_lossy().into_owned();
            let rel = if file.starts_with("ld-linux") { format!("lib64/{file}") } else { format!("lib/x86_64-linux-gnu/{file}") };
            if self.libs_done.insert(rel.clone()) {
                self.copy(src, &rel);
            }
        }
    }
}

// ---------------------------------------------------------------- image

/// A built boot image: Debian 12's kernel and an initramfs (without the
/// `baton` binary, which each run appends).
#[derive(Clone, Debug)]
pub struct Image {
    /// `<vm>/image-<key>`.
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// e.g. "6.1.0-57-amd64".
    pub kernel_release: String,
    /// (package, version), the kernel first.
    pub packages: Vec<(String, String)>,
    /// Modules loaded at boot, in order (with dependencies).
    pub modules: Vec<String>,
    pub key: String,
    /// True when this call built it (false: it was cached).
    pub built: bool,
    /// How long this call took (the build, or the cache look-up).
    pub elapsed: Duration,
}

impl Image {
    /// The image with the [`BASE_MODULES`]: cached, or built now.
    pub fn get() -> Image {
        Image::with_modules(&[])
    }

    /// The image with the [`BASE_MODULES`] and `extra` modules of the same
    /// kernel (with their dependencies): cached, or built now.
    pub fn with_modules(extra: &[String]) -> Image {
        Image::get_or_build(extra, false)
    }

    fn get_or_build(extra: &[String], retried: bool) -> Image {
        let t0 = Instant::now();
        let vm = vm_dir();
        fs::create_dir_all(&vm).unwrap_or_else(|e| panic!("vm: {}: {e}", vm.display()));
        let lock = FileLock::new(&vm.join("build.lock"));
        let packages = packages();
        let mut modules: Vec<String> = BASE_MODULES.iter().map(|m| m.to_string()).collect();
        for m in extra {
            if !modules.contains(m) {
                modules.push(m.clone());
            }
        }
        let host_tools: Vec<(String, PathBuf)> = HOST_TOOLS
            .iter()
            .filter_map(|(name, required)| match find_program(name) {
                Some(p) => Some((name.to_string(), p)),
                None if *required => panic!("vm: `{name}` not found on the host (run `cargo xtask setup`)"),
                None => None,
            })
            .collect();
        let mut key = Fnv::new();
        key.add(&FORMAT.to_le_bytes()).add(INIT.as_bytes()).add(LIB_SH.as_bytes());
        for (n, v) in &packages {
            key.add(n.as_bytes()).add(v.as_bytes());
        }
        for m in &modules {
            key.add(m.as_bytes());
        }
        for (n, p) in &host_tools {
            key.add(n.as_bytes()).add(file_stamp(p).as_bytes());
        }
        let key = key.hex();
        let dir = vm.join(format!("image-{key}"));
        let manifest = dir.join("manifest.json");
        if let Ok(text) = fs::read_to_string(&manifest) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let mods = v["modules"].as_array().map(|a| a.iter().filter_map(|m| m.as_str().map(String::from)).collect()).unwrap_or_default();
            return Image {
                kernel: dir.join("vmlinuz"),
                initrd: dir.join("initrd.cpio"),
                kernel_release: v["kernel_release"].as_str().unwrap_or_default().to_string(),
                dir,
                packages,
                modules: mods,
                key,
                built: false,
                elapsed: t0.elapsed(),
            };
        }
        eprintln!("vm: building the image {} (packages: {})", dir.display(), packages.iter().map(|(n, v)| format!("{n} {v}")).collect::<Vec<_>>().join(", "));
        let debs = match packages.iter().map(|(n, v)| download(n, v)).collect::<Result<Vec<PathBuf>, String>>() {
            Ok(d) => d,
            // Stale package lists name versions the mirror no longer has.
            Err(e) if !retried => {
                eprintln!("vm: {e}\nvm: updating the package lists and resolving the packages again");
                apt_update();
                let _ = fs::remove_file(vm.join("packages"));
                drop(lock);
                return Image::get_or_build(extra, true);
            }
            Err(e) => panic!("vm: {e}"),
        };
        let tmp = vm.join(format!("image-{key}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let (release, loaded) = build_image(&tmp, &packages, &debs, &modules, &host_tools);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::rename(tmp.join("vmlinuz"), dir.join("vmlinuz")).unwrap();
        fs::rename(tmp.join("initrd.cpio"), dir.join("initrd.cpio")).unwrap();
        let _ = fs::remove_dir_all(&tmp);
        let m = serde_json::json!({
            "kernel_release": release,
            "packages": packages.iter().map(|(n, v)| serde_json::json!({"name": n, "version": v})).collect::<Vec<_>>(),
            "modules": loaded,
            "host_tools": host_tools.iter().map(|(n, p)| serde_json::json!({"name": n, "path": p})).collect::<Vec<_>>(),
        });
        fs::write(&manifest, serde_json::to_string_pretty(&m).unwrap()).unwrap();
        gc_images(&vm, &dir);
        let elapsed = t0.elapsed();
        eprintln!("vm: image built in {:.1} s", elapsed.as_secs_f64());
        Image { kernel: dir.join("vmlinuz"), initrd: dir.join("initrd.cpio"), kernel_release: release, dir, packages, modules: loaded, key, built: true, elapsed }
    }
}

/// Keeps `keep` and the two newest other images, removes the rest: an image
/// is rebuilt whenever an input changes, and each is ~25 MiB.
fn gc_images(vm: &Path, keep: &Path) {
    let mut images: Vec<(SystemTime, PathBuf)> = fs::read_dir(vm)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p != keep && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("image-")) && p.extension().is_none_or(|x| x != "tmp"))
                .map(|p| (fs::metadata(&p).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH), p))
                .collect()
        })
        .unwrap_or_default();
    images.sort();
    let n = images.len().saturating_sub(2);
    for (_, p) in &images[..n] {
        let _ = fs::remove_dir_all(p);
    }
}

/// Extracts the packages and assembles the image in `tmp`; returns the kernel
/// release and the modules loaded at boot (in-guest paths, in order).
fn build_image(
    tmp: &Path,
    packages: &[(String, String)],
    debs: &[PathBuf],
    modules: &[String],
    host_tools: &[(String, PathBuf)],
) -> (String, Vec<String>) {
    let pkg_root = tmp.join("pkg");
    let mut roots = BTreeMap::new();
    for ((name, _), deb) in packages.iter().zip(debs) {
        let r = pkg_root.join(name);
        fs::create_dir_all(&r).unwrap();
        must(Command::new("dpkg").arg("-x").arg(deb).arg(&r));
        roots.insert(name.clone(), r);
    }
    let kernel_root = &roots[&packages[0].0];
    let release = fs::read_dir(kernel_root.join("lib/modules"))
        .expect("the kernel package has lib/modules")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a kernel release under lib/modules");
    fs::copy(kernel_root.join(format!("boot/vmlinuz-{release}")), tmp.join("vmlinuz")).expect("the kernel image");

    let lib_path: Vec<String> = roots
        .values()
        .flat_map(|r| [r.join("usr/lib/x86_64-linux-gnu"), r.join("lib/x86_64-linux-gnu")])
        .filter(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .collect();
    let mut st = Stage::new(tmp.join("root"), lib_path.join(":"));
    for d in ["bin", "dev", "proc", "sys", "run", "tmp", "host", "root", "etc", "lib/x86_64-linux-gnu", "lib64", "usr/lib/baton-vm", "var"] {
        st.mkdir(d);
    }
    st.symlink("bin", "sbin");
    st.symlink("../bin", "usr/bin");
    st.symlink("../bin", "usr/sbin");
    st.symlink("../../lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu");

    // Real tools first; busybox applets fill in the other names.
    let mut shipped = BTreeSet::new();
    for (name, path) in host_tools {
        st.binary(path, name);
        shipped.insert(name.clone());
    }
    let pkg_bin = |pkg: &str, rel: &str| roots[pkg].join(rel);
    st.binary(&pkg_bin("open-iscsi", "sbin/iscsistart"), "iscsistart");
    shipped.insert("iscsistart".into());
    st.binary(&pkg_bin("jq", "usr/bin/jq"), "jq");
    shipped.insert("jq".into());
    let mut sg: Vec<PathBuf> = fs::read_dir(roots["sg3-utils"].join("usr/bin")).unwrap().flatten().map(|e| e.path()).collect();
    sg.sort();
    for p in sg {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        st.binary(&p, &name);
        shipped.insert(name);
    }
    // /bin/sh is bash: Debian's busybox-static prefers its own applets
    // ("standalone shell"), so under busybox sh a script's `ip` or `dd` would
    // be busybox's whatever PATH says. busybox sh stays available as `ash`.
    st.symlink("bash", "bin/sh");
    shipped.insert("sh".into());
    let busybox = pkg_bin("busybox-static", "bin/busybox");
    st.copy(&busybox, "bin/busybox");
    for applet in must(Command::new(&busybox).arg("--list")).lines() {
        if !applet.is_empty() && applet != "busybox" && !shipped.contains(applet) {
            st.symlink("busybox", &format!("bin/{applet}"));
        }
    }

    // Modules: the closure in load order, decompressed (busybox insmod reads
    // no .ko.xz), with a modules.dep so that the kernel's on-demand loads
    // (busybox modprobe) find those of the set.
    must(Command::new("depmod").arg("-b").arg(kernel_root).arg(&release));
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(kernel_root)
        .args(["-S", &release, "-a", "--show-depends"])
        .args(modules)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("not found") {
        panic!("vm: resolving modules {modules:?} for {release}: {stderr}");
    }
    let prefix = kernel_root.display().to_string();
    let mut loaded = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(path) = line.strip_prefix("insmod ").and_then(|r| r.split_whitespace().next()) else { continue };
        let guest = path.strip_prefix(&prefix).unwrap_or_else(|| panic!("vm: module outside the kernel tree: {path}"));
        let guest = guest.strip_suffix(".xz").unwrap_or(guest).to_string();
        if loaded.contains(&guest) {
            continue;
        }
        let dst = st.root.join(guest.trim_start_matches('/'));
        fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if path.ends_with(".xz") {
            let f = File::create(&dst).unwrap();
            let s = Command::new("xz").arg("-dc").arg(path).stdout(f).status().unwrap();
            assert!(s.success(), "vm: xz -dc {path} failed");
        } else {
            fs::copy(path, &dst).unwrap();
        }
        loaded.push(guest);
    }
    let mod_dir = format!("lib/modules/{release}");
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        let src = kernel_root.join(&mod_dir).join(f);
        if src.exists() {
            fs::copy(&src, st.root.join(&mod_dir).join(f)).unwrap();
        }
    }
    must(Command::new("depmod").arg("-b").arg(&st.root).arg(&release));
    st.write("lib/modules/load.list", &(loaded.join("\n") + "\n"), 0o644);

    st.write("init", INIT, 0o755);
    st.write("usr/lib/baton-vm/lib.sh", LIB_SH, 0o644);
    st.write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    st.write("etc/group", "root:x:0:\n", 0o644);
    st.write("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n", 0o644);
    st.write("etc/profile", "export PATH=/bin\nexport VM_LIB=/usr/lib/baton-vm/lib.sh\n[ -f /host/vm.env ] && . /host/vm.env\nPS1='baton-vm# '\n", 0o644);
    st.write("etc/iscsi/initiatorname.iscsi", &format!("InitiatorName={INITIATOR_PREFIX}0\n"), 0o644);
    // An ld.so.cache is not needed (glibc searches /lib/x86_64-linux-gnu),
    // but makes the loader's look-ups cheaper under TCG.
    let _ = Command::new("ldconfig").arg("-r").arg(&st.root).stderr(Stdio::null()).status();
    write_cpio(&st.root, &tmp.join("initrd.cpio")).unwrap_or_else(|e| panic!("vm: writing the initramfs: {e}"));
    let _ = fs::remove_dir_all(&pkg_root);
    let _ = fs::remove_dir_all(&st.root);
    (release, loaded)
}

/// The `baton` binary under test: `$BATON_BIN`, else the one built with
/// the running test binary (target/debug/baton under `cargo test`: a stale
/// release build must not stand in for the code under test), else
/// target/release/baton, else target/debug/baton.
pub fn baton_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        let dir = if dir.ends_with("deps") { dir.parent().map(Path::to_path_buf).unwrap_or(dir) } else { dir };
        if dir.join("baton").is_file() && dir.join("deps").is_dir() {
            return dir.join("baton");
        }
    }
    let t = target_dir();
    for p in [t.join("release/baton"), t.join("debug/baton")] {
        if p.is_file() {
            return p;
        }
    }
    panic!("vm: no baton binary (set BATON_BIN, or `cargo build --release -p baton-agent`)");
}

/// The image's initramfs with an archive holding `baton` (debug info
/// stripped) and its libraries appended: `<vm>/initrd-<image>-<baton>.cpio`.
fn initrd_with_baton(image: &Image, baton: &Path) -> PathBuf {
    let vm = vm_dir();
    let bkey = Fnv::new().add(file_stamp(baton).as_bytes()).add(&FORMAT.to_le_bytes()).hex();
    let combined = vm.join(format!("initrd-{}-{bkey}.cpio", image.key));
    if combined.is_file() {
        return combined;
    }
    let t0 = Instant::now();
    let stage_dir = vm.join(format!("baton-{bkey}.tmp"));
    let _ = fs::remove_dir_all(&stage_dir);
    let mut st = Stage::new(stage_dir.join("root"), String::new());
    st.mkdir("bin");
    let dst = st.root.join("bin/baton");
    let stripped = find_program("objcopy")
        .map(|o| Command::new(o).arg("--strip-debug").arg(baton).arg(&dst).status().is_ok_and(|s| s.success()))
        .unwrap_or(false);
    if !stripped {
        fs::copy(baton, &dst).unwrap_or_else(|e| panic!("vm: {}: {e}", baton.display()));
    }
    st.libraries(baton);
    let overlay = stage_dir.join("baton.cpio");
    write_cpio(&st.root, &overlay).unwrap();
    let tmp = combined.with_extension("tmp");
    {
        let mut out = File::create(&tmp).unwrap();
        io::copy(&mut File::open(&image.initrd).unwrap(), &mut out).unwrap();
        io::copy(&mut File::open(&overlay).unwrap(), &mut out).unwrap();
    }
    fs::rename(&tmp, &combined).unwrap();
    eprintln!(
        "vm: {} added to the image ({:.1} MiB{}) in {:.1} s",
        baton.display(),
        fs::metadata(&dst).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        if stripped { ", debug info stripped" } else { "" },
        t0.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&stage_dir);
    // Keep only this combination (the runs hold the run lock, so none is in use).
    for e in fs::read_dir(&vm).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("initrd-") && n.ends_with(".cpio") && e.path() != combined {
            let _ = fs::remove_file(e.path());
        }
    }
    combined
}

// ---------------------------------------------------------------- accelerator

/// How qemu runs the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

fn qemu() -> PathBuf {
    program("qemu-system-x86_64")
}

fn qemu_base(image: &Image, accel: Accel, memory_mib: u32, cpus: u32) -> Command {
    let mut c = Command::new(qemu());
    c.args(["-accel", accel.name()])
        .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
        .args(["-m", &memory_mib.to_string(), "-smp", &cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-nodefaults", "-serial", "mon:stdio"])
        .arg("-kernel")
        .arg(&image.kernel);
    c
}

/// KVM when it really boots Debian's kernel here, else TCG.
///
/// `$BATON_VM_ACCEL` (kvm or tcg) decides when set. Otherwise: TCG when
/// /dev/kvm cannot be opened read-write; else a probe boots the image under
/// KVM with `baton.probe` on the command line, whose init prints "baton-vm:
/// probe ok" and powers off at once. Seen within 15 s: KVM. Not seen (on
/// hosts without VMX/SVM, qemu starts under KVM but the guest never gets
/// past the boot loader): TCG. The verdict is cached in `<vm>/accel` per host
/// kernel and qemu version.
pub fn accel(image: &Image) -> Accel {
    match std::env::var("BATON_VM_ACCEL").as_deref() {
        Ok("kvm") => return Accel::Kvm,
        Ok("tcg") => return Accel::Tcg,
        _ => {}
    }
    if fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Accel::Tcg;
    }
    let host = format!(
        "{} {}",
        fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        run_cmd(Command::new(qemu()).arg("--version")).unwrap_or_default().lines().next().unwrap_or("")
    );
    let cache = vm_dir().join("accel");
    if let Some((verdict, key)) = fs::read_to_string(&cache).ok().as_deref().and_then(|t| t.split_once('\n')) {
        if key.trim() == host {
            return if verdict == "kvm" { Accel::Kvm } else { Accel::Tcg };
        }
    }
    let log = vm_dir().join("accel-probe.log");
    let mut cmd = qemu_base(image, Accel::Kvm, 256, 1);
    cmd.arg("-initrd").arg(&image.initrd).args(["-append", "console=ttyS0 panic=-1 baton.probe"]);
    cmd.stdin(Stdio::null()).stdout(File::create(&log).unwrap()).stderr(Stdio::null());
    let t0 = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("vm: starting qemu: {e}"));
    let deadline = t0 + Duration::from_secs(15);
    let ok = loop {
        if read_lossy(&log).contains("baton-vm: probe ok") {
            break true;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break read_lossy(&log).contains("baton-vm: probe ok");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let verdict = if ok { Accel::Kvm } else { Accel::Tcg };
    eprintln!(
        "vm: KVM probe ({:.1} s): {}",
        t0.elapsed().as_secs_f64(),
        if ok { "Debian's kernel boots under KVM" } else { "the kernel did not reach init under KVM; using TCG (emulation)" }
    );
    fs::write(&cache, format!("{}\n{host}\n", verdict.name())).unwrap();
    verdict
}

// ---------------------------------------------------------------- runs

/// One VM run: a scenario on N nodes' disks. Build with [`Vm::builder`].
#[derive(Clone, Debug)]
pub struct Vm {
    name: String,
    nodes: usize,
    lun_mib: u32,
    scenario: String,
    env: Vec<(String, String)>,
    files: Vec<(String, Vec<u8>)>,
    timeout: Duration,
    memory_mib: u32,
    cpus: u32,
    modules: Vec<String>,
    baton: Option<PathBuf>,
    stream: bool,
    keep: bool,
    shell: bool,
    kernel_args: String,
    boot_stall: Duration,
    frozen_boots: u32,
}

impl Default for Vm {
    fn default() -> Vm {
        Vm {
            name: "run".into(),
            nodes: 3,
            lun_mib: 64,
            scenario: "true\n".into(),
            env: Vec::new(),
            files: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            memory_mib: 1024,
            cpus: 2,
            modules: Vec::new(),
            baton: None,
            stream: false,
            keep: std::env::var_os("BATON_KEEP_TEST_DIR").is_some(),
            shell: false,
            kernel_args: String::new(),
            boot_stall: BOOT_STALL,
            frozen_boots: 0,
        }
    }
}

/// What a run left: the scenario's exit status and output, its files, the
/// console log and timings.
#[derive(Debug)]
pub struct VmOutput {
    /// The scenario's exit status.
    pub status: i32,
    /// Boots it took (more than 1 when a boot hung before the init).
    pub boots: u32,
    pub stdout: String,
    pub stderr: String,
    /// `$VM_OUT` of the scenario (its files; the library's node directories
    /// are copied to `baton-vm/` there after it exits).
    pub files_dir: PathBuf,
    /// The run's shared directory (scenario, vm.env, stdout, serial.log, ...).
    pub run_dir: PathBuf,
    /// The serial console: the kernel's messages and the init's.
    pub serial_log: String,
    /// `/dev/baton/nodeN` → sdX, sgY and initiator IQN, one line per node.
    pub disks: String,
    pub accel: Accel,
    pub kernel_release: String,
    /// From qemu's start to the scenario's start.
    pub boot: Option<Duration>,
    /// The scenario's own time.
    pub scenario_time: Option<Duration>,
    /// qemu's whole run.
    pub total: Duration,
    keep: bool,
}

impl VmOutput {
    /// Panics (with stdout, stderr and the console's tail) unless the
    /// scenario exited 0.
    pub fn assert_success(&self) {
        if self.status != 0 {
            panic!("the VM scenario exited {}\n{}", self.status, self.report());
        }
    }

    /// A file the scenario wrote to `$VM_OUT`.
    pub fn file(&self, rel: &str) -> String {
        read_lossy(&self.files_dir.join(rel))
    }

    /// stdout, stderr and the tail of the serial console, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--- serial console (tail) ---\n{}\n--- (run directory: {}) ---",
            tail(&self.stdout, 80),
            tail(&self.stderr, 80),
            tail(&self.serial_log, 40),
            self.run_dir.display()
        )
    }

    /// Keeps the run directory after drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for VmOutput {
    fn drop(&mut self) {
        if !self.keep && !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

/// One VM at a time in this process; `<vm>/run.lock` does the same across processes.
static RUN_LOCK: Mutex<()> = Mutex::new(());

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Vm {
    pub fn builder() -> Vm {
        Vm::default()
    }
    /// A tag for the run directory (e.g. the test's name).
    pub fn name(mut self, name: &str) -> Vm {
        self.name = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(40).collect();
        self
    }
    /// Nodes: initiator sessions, each with its own disk (default 3).
    pub fn nodes(mut self, n: usize) -> Vm {
        assert!((1..=16).contains(&n), "1 to 16 nodes");
        self.nodes = n;
        self
    }
    /// Size of the LU, on the VM's tmpfs (default 64 MiB).
    pub fn lun_mib(mut self, mib: u32) -> Vm {
        self.lun_mib = mib;
        self
    }
    /// The scenario's text: run by /bin/sh (bash) unless it starts with `#!`.
    pub fn scenario(mut self, text: impl Into<String>) -> Vm {
        self.scenario = text.into();
        self
    }
    /// The scenario, read from a file.
    pub fn scenario_file(self, path: impl AsRef<Path>) -> Vm {
        let p = path.as_ref();
        let text = fs::read_to_string(p).unwrap_or_else(|e| panic!("vm: scenario {}: {e}", p.display()));
        self.scenario(text)
    }
    /// An environment variable of the scenario.
    pub fn env(mut self, key: &str, value: impl ToString) -> Vm {
        assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !key.is_empty(), "bad variable name {key:?}");
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    /// An input file, at `/host/in/<name>` in the VM.
    pub fn file(mut self, name: &str, contents: impl Into<Vec<u8>>) -> Vm {
        self.files.push((name.to_string(), contents.into()));
        self
    }
    /// Deadline of the whole run (boot included; default 300 s): qemu is
    /// killed then and the run panics with the console's tail.
    pub fn timeout(mut self, t: Duration) -> Vm {
        self.timeout = t;
        self
    }
    pub fn memory_mib(mut self, mib: u32) -> Vm {
        self.memory_mib = mib;
        self
    }
    pub fn cpus(mut self, n: u32) -> Vm {
        self.cpus = n;
        self
    }
    /// Extra kernel modules to load at boot (from the same kernel package).
    pub fn modules(mut self, names: &[&str]) -> Vm {
        self.modules.extend(names.iter().map(|s| s.to_string()));
        self
    }
    /// The `baton` binary (default: [`baton_binary`]).
    pub fn baton(mut self, path: impl Into<PathBuf>) -> Vm {
        self.baton = Some(path.into());
        self
    }
    /// Copy the scenario's stdout and stderr to this process's stderr while it runs.
    pub fn stream(mut self, on: bool) -> Vm {
        self.stream = on;
        self
    }
    /// Keep the run directory (also with `BATON_KEEP_TEST_DIR`).
    pub fn keep(mut self, on: bool) -> Vm {
        self.keep = on;
        self
    }
    /// Extra kernel command-line arguments.
    pub fn kernel_args(mut self, args: &str) -> Vm {
        self.kernel_args = args.to_string();
        self
    }
    /// How long a console may stay silent before the init's first line
    /// until the boot is taken as hung and tried again.
    pub fn boot_stall(mut self, t: Duration) -> Vm {
        self.boot_stall = t;
        self
    }
    /// For the test of the boot retry: the first `n` boots start with the
    /// guest's CPUs stopped (qemu `-S`), a boot that hangs before any output;
    /// such a boot is taken as hung after 5 s of silence.
    pub fn frozen_boots(mut self, n: u32) -> Vm {
        self.frozen_boots = n;
        self
    }
    /// An interactive shell on the console (this process's terminal) instead
    /// of the scenario, after the same set-up. Ctrl-A x quits qemu.
    pub fn shell(mut self, on: bool) -> Vm {
        self.shell = on;
        self
    }

    /// Boots the VM, runs the scenario and returns its output. Panics when
    /// the VM could not run it (the image could not be built, qemu failed,
    /// the set-up failed, the timeout passed), with the console's tail.
    pub fn run(self) -> VmOutput {
        let image = Image::with_modules(&self.modules);
        let baton = self.baton.clone().unwrap_or_else(baton_binary);
        let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let _flock = FileLock::new(&vm_dir().join("run.lock"));
        let accel = accel(&image);
        let initrd = initrd_with_baton(&image, &baton);

        let n = RUN_COUNTER.fetch_add(1, Ordering::SeqCst);
        let run_dir = vm_dir().join("runs").join(format!("{}-{}-{n}", self.name, std::process::id()));
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(run_dir.join("out")).unwrap();
        fs::create_dir_all(run_dir.join("in")).unwrap();
        let scenario = run_dir.join("scenario");
        fs::write(&scenario, &self.scenario).unwrap();
        fs::set_permissions(&scenario, fs::Permissions::from_mode(0o755)).unwrap();
        for (name, data) in &self.files {
            let p = run_dir.join("in").join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, data).unwrap();
        }
        let mut env = String::new();
        let mut put = |k: &str, v: &str| writeln!(env, "export {k}={}", shell_quote(v)).unwrap();
        put("VM_NODES", &self.nodes.to_string());
        put("VM_LUN_MIB", &self.lun_mib.to_string());
        put("VM_TARGET_IQN", TARGET_IQN);
        put("VM_INITIATOR_PREFIX", INITIATOR_PREFIX);
        put("VM_ACCEL", accel.name());
        put("VM_IN", "/host/in");
        put("VM_SHELL", if self.shell { "1" } else { "0" });
        for (k, v) in &self.env {
            put(k, v);
        }
        fs::write(run_dir.join("vm.env"), env).unwrap();

        let serial = run_dir.join("serial.log");
        let qemu_log = run_dir.join("qemu.log");
        let qemu_cmd = |attempt: u32| {
            let mut cmd = qemu_base(&image, accel, self.memory_mib, self.cpus);
            if attempt <= self.frozen_boots {
                cmd.arg("-S");
            }
            cmd.arg("-initrd")
                .arg(&initrd)
                .arg("-append")
                .arg(format!("console=ttyS0 panic=-1 oops=panic mitigations=off rdinit=/init {}", self.kernel_args).trim())
                .arg("-fsdev")
                .arg(format!("local,id=host,path={},security_model=none", run_dir.display()))
                .args(["-device", "virtio-9p-pci,fsdev=host,mount_tag=host"]);
            if self.shell {
                cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit()).stderr(Stdio::inherit());
            } else {
                cmd.stdin(Stdio::null()).stdout(File::create(&serial).unwrap()).stderr(File::create(&qemu_log).unwrap());
            }
            cmd
        };
        // A TCG guest now and then hangs before its init runs (seen in CI:
        // the console stopped at 0.97 s of guest time, in PCI enumeration,
        // and the run timed out minutes later). Nothing of the scenario has
        // run then, so such a boot is abandoned and the VM booted again:
        // at most BOOT_ATTEMPTS times, each hung console kept beside the run
        // as serial.hung-N.log and said on stderr.
        let mut attempt = 1;
        let (mut child, mut watch, t0, exit) = loop {
            let mut cmd = qemu_cmd(attempt);
            let t0 = Instant::now();
            let mut child = cmd.spawn().unwrap_or_else(|e| panic!("vm: starting {cmd:?}: {e}"));
            let mut watch = Watch::new(&run_dir, self.stream);
            let deadline = t0 + self.timeout;
            // A frozen boot (the test hook) is known to print nothing.
            let stall = if attempt <= self.frozen_boots { Duration::from_secs(5) } else { self.boot_stall };
            let (mut console_len, mut console_grew) = (0u64, Instant::now());
            let mut hung = false;
            let mut longest_silence = Duration::ZERO;
            let exit = loop {
                if let Some(st) = child.try_wait().unwrap() {
                    break Some(st);
                }
                let before = watch.init_started;
                watch.poll(t0);
                if !before && watch.init_started {
                    longest_silence = longest_silence.max(console_grew.elapsed());
                    eprintln!(
                        "vm: boot {attempt}: init after {:.1} s; the console's longest silence before it {:.1} s",
                        t0.elapsed().as_secs_f64(),
                        longest_silence.as_secs_f64()
                    );
                }
                if !self.shell && !watch.init_started {
                    let len = fs::metadata(&serial).map(|m| m.len()).unwrap_or(0);
                    if len != console_len {
                        longest_silence = longest_silence.max(console_grew.elapsed());
                        (console_len, console_grew) = (len, Instant::now());
                    } else if console_grew.elapsed() > stall {
                        hung = true;
                        break None;
                    }
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !hung {
                break (child, watch, t0, exit);
            }
            kill_child(&mut child);
            let kept = run_dir.join(format!("serial.hung-{attempt}.log"));
            let _ = fs::rename(&serial, &kept);
            eprintln!(
                "vm: boot {attempt} hung before init ({} accel; console silent for {:?} after {:.1} s; kept {}): {}",
                accel.name(),
                stall,
                t0.elapsed().as_secs_f64(),
                kept.display(),
                if attempt < BOOT_ATTEMPTS { "booting again" } else { "giving up" }
            );
            if attempt >= BOOT_ATTEMPTS {
                panic!(
                    "vm: {BOOT_ATTEMPTS} boots hung before init ({} accel)\n--- last console (tail) ---\n{}\n--- (run directory kept: {}) ---",
                    accel.name(),
                    tail(&read_lossy(&kept), 40),
                    run_dir.display()
                );
            }
            attempt += 1;
        };
        watch.poll(t0);
        let total = t0.elapsed();
        let serial_log = if self.shell { String::new() } else { read_lossy(&serial) };
        let status_text = fs::read_to_string(run_dir.join("status")).ok();
        let stdout = read_lossy(&run_dir.join("stdout"));
        let stderr = read_lossy(&run_dir.join("stderr"));
        let context = || {
            format!(
                "--- serial console (tail) ---\n{}\n--- qemu ---\n{}\n--- scenario stdout (tail) ---\n{}\n--- scenario stderr (tail) ---\n{}\n--- (run directory kept: {}) ---",
                tail(&serial_log, 60),
                tail(&read_lossy(&qemu_log), 20),
                tail(&stdout, 40),
                tail(&stderr, 40),
                run_dir.display()
            )
        };
        if exit.is_none() {
            kill_child(&mut child);
            panic!("vm: timed out after {:?} ({} accel); qemu killed\n{}", self.timeout, accel.name(), context());
        }
        let setup_error = read_lossy(&run_dir.join("setup-error"));
        if !setup_error.is_empty() {
            panic!("vm: the VM's set-up failed: {}\n{}", setup_error.trim(), context());
        }
        let status = match status_text.as_deref().map(str::trim).map(str::parse::<i32>) {
            Some(Ok(s)) => s,
            _ => panic!("vm: qemu exited ({}) without the scenario's exit status\n{}", exit.unwrap(), context()),
        };
        VmOutput {
            status,
            boots: attempt,
            stdout,
            stderr,
            files_dir: run_dir.join("out"),
            disks: read_lossy(&run_dir.join("disks")),
            run_dir,
            serial_log,
            accel,
            kernel_release: image.kernel_release.clone(),
            boot: watch.ready,
            scenario_time: watch.ready.zip(watch.done).map(|(r, d)| d.saturating_sub(r)),
            total,
            keep: self.keep || self.shell,
        }
    }
}

fn kill_child(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Follows a run: the console's markers, and the scenario's output when streaming.
struct Watch {
    serial: PathBuf,
    outputs: Vec<(PathBuf, u64)>,
    stream: bool,
    ready: Option<Duration>,
    done: Option<Duration>,
    /// The VM's init printed its first line: the kernel booted.
    init_started: bool,
}

impl Watch {
    fn new(run_dir: &Path, stream: bool) -> Watch {
        Watch {
            serial: run_dir.join("serial.log"),
            outputs: vec![(run_dir.join("stdout"), 0), (run_dir.join("stderr"), 0)],
            stream,
            ready: None,
            done: None,
            init_started: false,
        }
    }

    fn poll(&mut self, t0: Instant) {
        if self.ready.is_none() || self.done.is_none() {
            let s = read_lossy(&self.serial);
            if !self.init_started && s.contains("baton-vm: kernel ") {
                self.init_started = true;
            }
            if self.ready.is_none() && s.contains("baton-vm: ready") {
                self.ready = Some(t0.elapsed());
            }
            if self.done.is_none() && s.contains("baton-vm: scenario exited") {
                self.done = Some(t0.elapsed());
            }
        }
        if self.stream {
            for (p, off) in &mut self.outputs {
                let Ok(mut f) = File::open(&*p) else { continue };
                if f.seek(SeekFrom::Start(*off)).is_err() {
                    continue;
                }
                let mut buf = Vec::new();
                if f.read_to_end(&mut buf).is_ok() && !buf.is_empty() {
                    *off += buf.len() as u64;
                    let _ = io::stderr().write_all(&buf);
                }
            }
        }
    }
}

/// When the image was last built (its manifest's mtime), for `cargo xtask vm image`.
pub fn built_at(image: &Image) -> Option<SystemTime> {
    fs::metadata(image.dir.join("manifest.json")).and_then(|m| m.modified()).ok()
}
