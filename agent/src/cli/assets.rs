//! Man pages and shell completions generated from the CLI definition
//! (`baton generate-assets --out DIR`, hidden; `cargo xtask deb` runs it):
//!
//! * `DIR/man/baton.1` and one page per subcommand (`baton-run.1`,
//!   `baton-status.1`, ...; nested ones as `baton-config-check.1`), from
//!   clap_mangen;
//! * `DIR/completions/baton.bash`, `_baton` (zsh), `baton.fish`, from
//!   clap_complete.

use std::path::Path;

use anyhow::{Context, Result};

/// Writes the man pages and the completions of `cmd` under `out`; returns
/// the files written.
pub fn write(mut cmd: clap::Command, out: &Path) -> Result<Vec<std::path::PathBuf>> {
    let man = out.join("man");
    let comp = out.join("completions");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    std::fs::create_dir_all(&comp).with_context(|| format!("creating {}", comp.display()))?;
    // One page per command and visible subcommand (baton.1, baton-run.1,
    // baton-config-check.1, ...; hidden internal commands left out).
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("writing man pages into {}", man.display()))?;
    let mut written: Vec<std::path::PathBuf> = std::fs::read_dir(&man)?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    written.sort();
    cmd.build();
    for (shell, file) in [
        (clap_complete::Shell::Bash, "baton.bash"),
        (clap_complete::Shell::Zsh, "_baton"),
        (clap_complete::Shell::Fish, "baton.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "baton", &mut buf);
        let p = comp.join(file);
        std::fs::write(&p, buf).with_context(|| format!("writing {}", p.display()))?;
        written.push(p);
    }
    Ok(written)
}
