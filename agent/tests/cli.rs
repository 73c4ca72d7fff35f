//! `baton`'s operator commands against a stand-in agent: a Unix socket at
//! the configured control socket's path that records each request line and
//! answers what the test says. Checks the wire text each subcommand sends
//! (docs/control-socket.md), how replies are shown, and that a value the
//! protocol cannot carry is refused before anything is sent. No kernel, no
//! root needed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::mpsc;

/// A configuration (the packaged example) whose paths are under `dir`.
fn config(dir: &Path) -> PathBuf {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/baton.toml")).unwrap();
    assert!(!example.contains("\n[paths]"), "the example has its own [paths]: adapt this test");
    let text = format!(
        "{example}\n[paths]\nrun_dir = \"{0}/run\"\nstate_dir = \"{0}/state\"\nbpffs_dir = \"/sys/fs/bpf/baton-cli-test-{1}\"\n",
        dir.display(),
        std::process::id()
    );
    let p = dir.join("baton.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn fresh_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("baton-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("run")).unwrap();
    d
}

/// Serves the control socket of `dir` ("prod" is the example's cluster):
/// one connection per reply in `replies`, each request line sent back on
/// the returned channel.
fn stand_in(dir: &Path, replies: Vec<&'static str>) -> mpsc::Receiver<String> {
    let listener = UnixListener::bind(dir.join("run").join("prod.sock")).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for reply in replies {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            (&s).write_all(format!("{reply}\n").as_bytes()).unwrap();
        }
    });
    rx
}

fn baton(cfg: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_baton")).args(args).arg("--config").arg(cfg).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn each_operator_command_sends_its_documented_line_and_shows_the_reply() {
    let dir = fresh_dir("lines");
    let cfg = config(&dir);
    let cases: &[(&[&str], &[&str])] = &[
        (&["switchover", "web"], &["switchover web\n"]),
        (&["switchover", "web", "2"], &["switchover web 2\n"]),
        (&["standby", "2"], &["standby 2\n"]),
        (&["unstandby", "2"], &["unstandby 2\n"]),
        (&["maintenance", "on"], &["maintenance on\n"]),
        (&["maintenance", "off"], &["maintenance off\n"]),
        (&["offline", "web"], &["offline web\n"]),
        (&["online", "web"], &["online web\n"]),
        (&["register", "web"], &["register web\n"]),
        (&["register", "web", "3"], &["register web\n", "switchover web 3\n"]),
        (&["deregister", "web"], &["deregister web\n"]),
        (&["takeover", "2"], &["takeover 2 operator\n"]),
        (&["takeover", "2", "--reason", "disk  path lost"], &["takeover 2 disk path lost\n"]),
        (&["giveback", "2"], &["giveback 2\n"]),
        (&["stop"], &["stop\n"]),
        (&["stop", "--all"], &["stop-all\n"]),
        (&["reload"], &["reload\n"]),
        (&["reload", "--all"], &["reload --all\n"]),
        (&["distress"], &["distress admin\n"]),
        (&["fail", "--reason", "corruption"], &["distress corruption\n"]),
        (&["fence", "confirm", "3"], &["fence-confirm 3\n"]),
    ];
    for (args, lines) in cases {
        let got = stand_in(&dir, vec!["ok"; lines.len()]);
        let out = baton(&cfg, args);
        assert!(out.status.success(), "baton {args:?}: {}", text(&out.stderr));
        let sent: Vec<String> = got.try_iter().collect();
        assert_eq!(sent, *lines, "baton {args:?}");
        assert_eq!(text(&out.stdout), "ok\n".repeat(lines.len()), "baton {args:?}");
        std::fs::remove_file(dir.join("run/prod.sock")).unwrap();
    }
    // A reply with a message is shown as it came; a refusal fails the
    // command with its reason, and `register GROUP NODE` stops there.
    let got = stand_in(&dir, vec!["ok: leaving"]);
    let out = baton(&cfg, &["stop"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "ok: leaving\n");
    assert_eq!(got.recv().unwrap(), "stop\n");
    std::fs::remove_file(dir.join("run/prod.sock")).unwrap();
    let got = stand_in(&dir, vec!["error: no group \"web\" is configured"]);
    let out = baton(&cfg, &["register", "web", "3"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "baton: error: no group \"web\" is configured\n");
    assert_eq!(got.recv().unwrap(), "register web\n");
    assert!(got.recv().is_err(), "no switchover after a refused register");
    std::fs::remove_file(dir.join("run/prod.sock")).unwrap();
    // A reply that is not one of the protocol's.
    let _got = stand_in(&dir, vec!["ok 12"]);
    let out = baton(&cfg, &["standby", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unexpected reply \"ok 12\" to `standby`"), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_value_the_protocol_cannot_carry_is_refused_before_anything_is_sent() {
    let dir = fresh_dir("refused");
    let cfg = config(&dir);
    let got = stand_in(&dir, vec!["ok"]);
    // Sent as a line, `web 2` would be a move of `web` to node 2.
    let out = baton(&cfg, &["switchover", "web 2"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "baton: error: switchover: the group \"web 2\" cannot be sent on the control socket: it contains a blank\n");
    let out = baton(&cfg, &["takeover", "2", "--reason", "x\nstop"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the reason \"x\\nstop\" cannot be sent"), "{}", text(&out.stderr));
    let out = baton(&cfg, &["distress", "--reason", "bored"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "baton: error: unknown reason \"bored\": use communication, protocol, component, corruption or admin\n");
    assert!(got.try_recv().is_err(), "nothing may reach the agent");
    // Without an agent: the path is named.
    std::fs::remove_file(dir.join("run/prod.sock")).unwrap();
    let out = baton(&cfg, &["standby", "2"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&format!("cannot reach the agent at {}/run/prod.sock", dir.display())), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
