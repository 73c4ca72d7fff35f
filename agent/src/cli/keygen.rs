//! `baton keygen`: a new 128-bit cluster secret.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// `baton keygen [--out FILE]`.
pub fn run(out: Option<PathBuf>) -> Result<()> {
    let mut key = [0u8; 16];
    getrandom(&mut key)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    match out {
        None => println!("{hex}"),
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
            writeln!(f, "{hex}")?;
            eprintln!("wrote a new cluster secret to {} (mode 0600); copy it to every node", path.display());
        }
    }
    Ok(())
}

fn getrandom(buf: &mut [u8]) -> Result<()> {
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        anyhow::bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
