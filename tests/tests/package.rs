//! The packaging assets (issue 14, item 1) that `cargo xtask deb` puts into
//! the .deb, generated from the CLI by the binary under test: a man page per
//! visible command, and bash/zsh/fish completions that the shells accept.
//! (`cargo xtask deb --check` builds the package itself and installs it into
//! a throwaway Debian 12 root; docs/operations.md.)

use std::path::Path;
use std::process::Command;

use baton_tests::*;

#[test]
fn man_pages_and_completions_are_generated_from_the_cli() {
    let dir = test_root().join(format!("baton-assets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(baton_bin()).args(["generate-assets", "--out"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    // Every visible subcommand of `baton --help` has its page.
    let help = Command::new(baton_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let subs: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .collect();
    assert!(subs.len() >= 15 && subs.contains(&"run") && subs.contains(&"status"), "{help}");
    for s in &subs {
        let page = dir.join(format!("man/baton-{s}.1"));
        assert!(page.exists(), "no man page for `baton {s}`: {listed}");
    }
    assert!(dir.join("man/baton.1").exists() && dir.join("man/baton-config-check.1").exists());
    // Hidden internal commands have none.
    for hidden in ["watchdog", "generate-assets"] {
        assert!(!dir.join(format!("man/baton-{hidden}.1")).exists(), "a page for the internal `baton {hidden}`");
    }
    // The pages are valid roff that man renders, with the options.
    let run = std::fs::read_to_string(dir.join("man/baton-run.1")).unwrap();
    assert!(run.starts_with(".ie \\n(.g .ds Aq") && run.contains(".TH baton-run 1"), "{run}");
    assert!(run.contains("/etc/baton/baton.toml"), "the default config path is in baton-run(1): {run}");
    if Path::new("/usr/bin/man").exists() {
        let r = Command::new("man").arg("-l").arg(dir.join("man/baton-run.1")).env("MANPAGER", "cat").env("COLUMNS", "100").output().unwrap();
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(r.status.success() && text.contains("--config"), "man -l baton-run.1: {text}");
    }
    // bash: the script parses and registers the completion function, and
    // completes subcommands.
    let bash = dir.join("completions/baton.bash");
    let script = format!(
        "source {}; COMP_WORDS=(baton sta); COMP_CWORD=1; COMP_LINE='baton sta'; COMP_POINT=9; _baton baton sta baton; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        bash.display()
    );
    let r = Command::new("bash").args(["-c", &script]).output().unwrap();
    let words = String::from_utf8_lossy(&r.stdout).to_string();
    assert!(r.status.success() && words.lines().any(|w| w == "status") && words.lines().any(|w| w == "standby"), "bash completion of `baton sta`: {words} {}", String::from_utf8_lossy(&r.stderr));
    // zsh and fish: the files are there and name the command (the shells are
    // checked when installed).
    let zsh = std::fs::read_to_string(dir.join("completions/_baton")).unwrap();
    assert!(zsh.starts_with("#compdef baton"), "{zsh}");
    let fish = std::fs::read_to_string(dir.join("completions/baton.fish")).unwrap();
    assert!(fish.contains("complete -c baton"), "{fish}");
    for (shell, file) in [("zsh", "_baton"), ("fish", "baton.fish")] {
        if let Ok(r) = Command::new(shell).arg("-n").arg(dir.join("completions").join(file)).output() {
            assert!(r.status.success(), "{shell} -n {file}: {}", String::from_utf8_lossy(&r.stderr));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
