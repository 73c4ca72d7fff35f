//! Writing the agent's state files (`<state_dir>/*`): all or nothing, and
//! never through a planted link.
//!
//! [`write_atomic`] writes a temporary file next to the target, with a name
//! no other writer uses (the pid, a per-process counter and the time), opened
//! with `O_CREAT | O_EXCL | O_NOFOLLOW` (so it is always a new file of ours,
//! never an existing file or a symlink someone placed there), then renames it
//! over the target (a rename replaces a symlink at the target, it does not
//! follow it). With `durable`, the file is fsync'ed before the rename and the
//! directory after it, so the new content survives a power cut: used for the
//! files a later life depends on (the incarnation, the guard's record of what
//! is held, the takeover state). The status snapshots (`agent.json`,
//! `cluster.json`, `services.json`), rewritten several times a second by the
//! event loop, are not fsync'ed: losing one in a power cut is harmless, and
//! an fsync under I/O pressure could stall the loop.
//!
//! [`write_json`] is the writer of every state file the agent keeps as
//! JSON: the status snapshots as the types of the crate `baton-state`
//! (`state/src/lib.rs`, shared with `baton status`, the tests and xtask).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "state".into());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.{nanos}.tmp", std::process::id()))
}

/// Replaces `path` with `data` (see the module doc). Mode 0644 (status
/// files are read by `baton status`; nothing secret is kept in them).
pub fn write_atomic(path: &Path, data: &[u8], durable: bool) -> io::Result<()> {
    let tmp = temp_name(path);
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC).bits())
            .open(&tmp)?;
        f.write_all(data)?;
        if durable {
            f.sync_all()?;
        }
        drop(f);
        std::fs::rename(&tmp, path)?;
        if durable {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Replaces `path` with `value` as JSON (one of the `baton_state` types),
/// through [`write_atomic`].
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T, durable: bool) -> io::Result<()> {
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    write_atomic(path, &data, durable)
}

/// Why the incarnation file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IncarnationError {
    #[error("cannot read the incarnation file {path}: {source} (a new life must be numbered above the last one; fix or remove the file)")]
    Read { path: PathBuf, source: io::Error },
    #[error("the incarnation file {path} is corrupt ({content:?} is not a number); a new life must be numbered above the last one: restore the file, or remove it if this node's last life is over everywhere")]
    Corrupt { path: PathBuf, content: String },
    #[error("cannot write the incarnation file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

/// The last incarnation recorded in `file`: 0 when there is no file (the
/// node's first life); an error naming the file when it cannot be read or
/// does not hold a number.
pub fn last_incarnation(file: &Path) -> Result<u64, IncarnationError> {
    match std::fs::read_to_string(file) {
        Ok(s) => s.trim().parse().map_err(|_| IncarnationError::Corrupt { path: file.to_path_buf(), content: s.chars().take(64).collect() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(IncarnationError::Read { path: file.to_path_buf(), source }),
    }
}

/// A new incarnation: the wall clock in µs (`wall_us`), but always above
/// the last one this node used, recorded durably before it is returned.
pub fn next_incarnation(file: &Path, wall_us: u64) -> Result<u64, IncarnationError> {
    let last = last_incarnation(file)?;
    let inc = wall_us.max(last + 1);
    write_atomic(file, format!("{inc}\n").as_bytes(), true).map_err(|source| IncarnationError::Write { path: file.to_path_buf(), source })?;
    Ok(inc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        crate::test_util::fresh_dir(&format!("statefile-{tag}"))
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_never_followed_and_no_temporary_is_left() {
        let d = dir("link");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = d.join("agent.json");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        write_atomic(&target, b"{}", false).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&target).unwrap().file_type().is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "{}");
        // The old fixed name `agent.tmp` planted as a link is not used either.
        std::os::unix::fs::symlink(&victim, d.join("agent.tmp")).unwrap();
        write_atomic(&target, b"{\"a\":1}", true).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let names: Vec<String> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp") || n == "agent.tmp"), "{names:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn concurrent_writers_never_leave_a_mixed_or_partial_file() {
        let d = dir("conc");
        let target = d.join("cluster.json");
        let hs: Vec<_> = (0..6u8)
            .map(|t| {
                let target = target.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        write_atomic(&target, &vec![b'a' + t; 10_000], t % 2 == 0).unwrap();
                    }
                })
            })
            .collect();
        for _ in 0..200 {
            if let Ok(b) = std::fs::read(&target) {
                assert_eq!(b.len(), 10_000);
                assert!(b.iter().all(|c| *c == b[0]), "a file mixed from two writers");
            }
        }
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "temporaries left behind");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn incarnations_grow_and_an_unreadable_or_corrupt_file_is_an_error_naming_it() {
        let d = dir("inc");
        let f = d.join("incarnation");
        assert_eq!(next_incarnation(&f, 1000).unwrap(), 1000);
        // The clock went back: still above the last one.
        assert_eq!(next_incarnation(&f, 5).unwrap(), 1001);
        assert_eq!(last_incarnation(&f).unwrap(), 1001);
        std::fs::write(&f, "garbage\n").unwrap();
        let e = next_incarnation(&f, 2000).unwrap_err();
        assert!(matches!(e, IncarnationError::Corrupt { .. }));
        assert!(e.to_string().contains(&f.display().to_string()) && e.to_string().contains("garbage"), "{e}");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "garbage\n", "nothing written after the error");
        std::fs::write(&f, "").unwrap();
        assert!(matches!(last_incarnation(&f), Err(IncarnationError::Corrupt { .. })));
        // Unreadable: a directory where the file should be.
        std::fs::remove_file(&f).unwrap();
        std::fs::create_dir(&f).unwrap();
        let e = next_incarnation(&f, 3000).unwrap_err();
        assert!(matches!(e, IncarnationError::Read { .. }) && e.to_string().contains(&f.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
