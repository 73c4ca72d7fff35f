//! The local control socket (`<run_dir>/<cluster>.sock`, mode 0600): one
//! request line, one reply line.
//!
//! | request | reply |
//! |---|---|
//! | `ping` | `ok <incarnation>` |
//! | `reload [--all]` | `ok: reloaded ...` or `error: <why>` (docs/reload.md); `--all` asks every peer to reload its own file |
//! | `distress <reason>` | `ok` once the distress signal was sent |
//! | `switchover <group> [<node>]` | `ok` once handed to the services core (it asks the deciding node) |
//! | `standby <node>` / `unstandby <node>` | `ok` |
//! | `maintenance on\|off` | `ok` |
//! | `offline <group>` / `online <group>` | `ok` (S4.6 off-line mode, asked of the deciding node) |
//! | `group-state <group>` | `ok active\|busy\|idle\|unknown`: whether the group runs here, a run or halt of it is in progress, or neither (asked by a watchdog process, S4.5) |

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Sends one request to a running agent and returns its reply line.
pub async fn request(socket: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(socket).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot reach the agent at {}: {e} (is `baton run` running?)", socket.display()))
    })?;
    s.write_all(format!("{line}\n").as_bytes()).await?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).await?;
    Ok(reply.trim().to_string())
}

pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let l = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Reads one request line from an accepted connection.
pub async fn read_request(s: &mut UnixStream) -> std::io::Result<String> {
    let (r, _) = s.split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(line.trim().to_string())
}

pub async fn reply(s: &mut UnixStream, line: &str) -> std::io::Result<()> {
    s.write_all(format!("{line}\n").as_bytes()).await
}

/// Distress reasons by name (S0.1).
pub fn reason_code(name: &str) -> Option<u32> {
    Some(match name {
        "communication" => baton_common::DISTRESS_COMMUNICATION,
        "protocol" => baton_common::DISTRESS_PROTOCOL,
        "component" => baton_common::DISTRESS_COMPONENT,
        "corruption" => baton_common::DISTRESS_CORRUPTION,
        "admin" => baton_common::DISTRESS_ADMIN,
        _ => return None,
    })
}
