//! The agent's local Unix sockets (the control socket and the subsystem
//! socket): created with their final mode atomically, never taking a live
//! agent's socket away, and serving only permitted peers.
//!
//! * **Atomic creation.** The socket is bound inside a fresh private
//!   directory (mode 0700, next to the final path), given its mode (0600,
//!   or 0660 and the group [`Access::group`] when `paths.socket_group` is
//!   configured), then renamed into place. So nobody ever sees it with a
//!   wider mode, and the rename replaces a stale socket in one step.
//! * **Never a live agent's socket.** Before that, the existing path is
//!   connected to: if an agent answers, [`bind`] fails with
//!   [`LocalSockError::InUse`] and touches nothing. A path that is not a
//!   socket is never replaced.
//! * **Peer credentials.** Every accepted connection's `SO_PEERCRED` is
//!   checked ([`Access::permits`]): root, the agent's own user, or (when
//!   `paths.socket_group` is configured) a process whose primary or
//!   supplementary groups include that group. Others are closed at once.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Who may use a local socket beside root and the agent's own user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// `paths.socket_group` as a gid.
    pub group: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalSockError {
    #[error("cannot create {dir}, the directory of {path}: {source}")]
    CreateDir { dir: PathBuf, path: PathBuf, source: io::Error },
    #[error("{path} is in use: an agent answers on it (is another agent of this cluster, or with the same run_dir, running?); refusing to start")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket: refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot create the socket {path} (in the private directory {tmp}): {source}")]
    Create { path: PathBuf, tmp: PathBuf, source: io::Error },
}

/// Why a peer may not use a local socket ([`Access::check`]).
#[derive(Debug, thiserror::Error)]
pub enum AccessDenied {
    #[error("cannot read the peer's credentials: {source}")]
    NoCredentials {
        #[source]
        source: io::Error,
    },
    #[error("uid {uid} (pid {pid:?}) is not root and not in group {group} (paths.socket_group)")]
    NotInGroup { uid: u32, pid: Option<i32>, group: u32 },
    #[error("uid {uid} (pid {pid:?}) is not root (configure paths.socket_group to allow a group)")]
    NotRoot { uid: u32, pid: Option<i32> },
}

impl Access {
    /// The socket's mode: 0600, or 0660 with a socket group.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    /// Whether a peer with these credentials may use the socket; `Err`
    /// says why not.
    pub fn permits(&self, uid: u32, gid: u32, pid: Option<i32>) -> Result<(), AccessDenied> {
        let me = nix::unistd::geteuid().as_raw();
        if uid == 0 || uid == me {
            return Ok(());
        }
        if let Some(g) = self.group {
            if gid == g {
                return Ok(());
            }
            if let Some(pid) = pid {
                if supplementary_groups(pid).contains(&g) {
                    return Ok(());
                }
            }
            return Err(AccessDenied::NotInGroup { uid, pid, group: g });
        }
        Err(AccessDenied::NotRoot { uid, pid })
    }

    /// Checks an accepted connection's `SO_PEERCRED`.
    pub fn check(&self, s: &tokio::net::UnixStream) -> Result<(), AccessDenied> {
        let c = s.peer_cred().map_err(|source| AccessDenied::NoCredentials { source })?;
        self.permits(c.uid(), c.gid(), c.pid())
    }
}

/// The supplementary groups of process `pid` (`Groups:` of its status).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        })
        .unwrap_or_default()
}

/// Fails with [`LocalSockError::InUse`] when an agent answers on `path`
/// (checked at start, before anything of this node is touched).
pub fn ensure_free(path: &Path) -> Result<(), LocalSockError> {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(LocalSockError::InUse { path: path.to_path_buf() });
    }
    Ok(())
}

static TMP: AtomicU32 = AtomicU32::new(0);

/// Binds a listening socket at `path` (see the module doc). Must run inside
/// a tokio runtime (the listener is registered with it).
pub fn bind(path: &Path, access: Access) -> Result<tokio::net::UnixListener, LocalSockError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|source| LocalSockError::CreateDir { dir: dir.clone(), path: path.to_path_buf(), source })?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(LocalSockError::InUse { path: path.to_path_buf() });
            }
        }
        Ok(_) => return Err(LocalSockError::NotASocket { path: path.to_path_buf() }),
        Err(_) => {}
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "sock".into());
    let tmp = dir.join(format!(".{name}.{}.{}", std::process::id(), TMP.fetch_add(1, Ordering::Relaxed)));
    let err = |source: io::Error| LocalSockError::Create { path: path.to_path_buf(), tmp: tmp.clone(), source };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(err)?;
    let inner = tmp.join("s");
    let result = (|| -> io::Result<std::os::unix::net::UnixListener> {
        let l = std::os::unix::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(access.mode()))?;
        if let Some(g) = access.group {
            std::os::unix::fs::lchown(&inner, None, Some(g))?;
        }
        // Another agent may have bound the path meanwhile: look again just
        // before the rename (a small window that only two agents started
        // at the same instant could hit; the state-dir lock of `baton run`
        // closes it for agents of the same node).
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "in use"));
        }
        std::fs::rename(&inner, path)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&tmp);
    match result {
        Ok(l) => tokio::net::UnixListener::from_std(l).map_err(err),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LocalSockError::InUse { path: path.to_path_buf() }),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn dir(tag: &str) -> PathBuf {
        crate::test_util::fresh_dir(&format!("localsock-{tag}"))
    }

    #[tokio::test]
    async fn created_with_its_mode_a_live_socket_is_kept_a_stale_one_replaced() {
        let d = dir("a");
        let p = d.join("x.sock");
        let l = bind(&p, Access::default()).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        // Nothing left of the private directory.
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1);
        // A second bind while the first listens: refused, the socket kept.
        let e = bind(&p, Access::default()).unwrap_err();
        assert!(matches!(e, LocalSockError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("x.sock"), "{e}");
        assert!(std::os::unix::net::UnixStream::connect(&p).is_ok(), "the live socket must still answer");
        // Stale (nobody listens): replaced.
        drop(l);
        let _l2 = bind(&p, Access { group: Some(0) }).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o660, 0));
        // Not a socket: never replaced.
        let f = d.join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(matches!(bind(&f, Access::default()), Err(LocalSockError::NotASocket { .. })));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn credentials_root_own_user_and_the_socket_group() {
        let me = nix::unistd::geteuid().as_raw();
        let none = Access::default();
        assert!(none.permits(0, 0, None).is_ok());
        assert!(none.permits(me, 12345, None).is_ok());
        if me != 65534 {
            let e = none.permits(65534, 65534, None).unwrap_err().to_string();
            assert!(e.contains("65534") && e.contains("socket_group"), "{e}");
            let g = Access { group: Some(4242) };
            assert!(g.permits(65534, 4242, None).is_ok());
            assert!(g.permits(65534, 65534, None).is_err());
            // Supplementary groups come from /proc/PID/status: this test's
            // own process has none of 4242.
            assert!(g.permits(65534, 65534, Some(std::process::id() as i32)).is_err());
        }
    }
}
