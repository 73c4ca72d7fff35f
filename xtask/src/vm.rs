//! `cargo xtask vm`: the test VM on Debian 12's own kernel (baton_tests::vm, docs/vm.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use baton_tests::vm::{self, Image, Vm};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Build (or find cached) the boot image; print its paths and versions.
    Image {
        /// Extra kernel modules to include and load (comma-separated).
        #[arg(long, value_delimiter = ',')]
        modules: Vec<String>,
    },
    /// Boot the VM, run SCRIPT in it, print its output, exit with its status.
    Run(RunArgs),
    /// Boot the VM with the same set-up and give an interactive shell on the console.
    Shell(CommonArgs),
}

#[derive(clap::Args)]
pub struct CommonArgs {
    /// Nodes (iSCSI sessions, each with its own /dev/baton/nodeN).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Size of the LU in MiB.
    #[arg(long, default_value_t = 64)]
    lun_mib: u32,
    /// The baton binary (default: build the release agent and use it).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Extra kernel modules to load (comma-separated).
    #[arg(long, value_delimiter = ',')]
    modules: Vec<String>,
    /// Environment of the scenario, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scenario (a shell script; `#!/bin/bash` for bash).
    script: PathBuf,
    #[command(flatten)]
    common: CommonArgs,
    /// Kill the VM after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print the serial console after the run.
    #[arg(long)]
    serial: bool,
}

pub fn run(cmd: VmCmd) -> Result<()> {
    match cmd {
        VmCmd::Image { modules } => image(&modules),
        VmCmd::Run(args) => run_script(args),
        VmCmd::Shell(args) => shell(args),
    }
}

fn check() -> Result<()> {
    if let Some(why) = vm::unavailable_reason() {
        bail!("the VM cannot run here: {why}");
    }
    Ok(())
}

fn image(modules: &[String]) -> Result<()> {
    check()?;
    let img = Image::with_modules(modules);
    println!("image:   {}", img.dir.display());
    println!("kernel:  {} ({})", img.kernel.display(), img.kernel_release);
    println!("initrd:  {} ({:.1} MiB)", img.initrd.display(), std::fs::metadata(&img.initrd)?.len() as f64 / 1048576.0);
    println!("packages:");
    for (n, v) in &img.packages {
        println!("  {n} {v}");
    }
    println!("modules loaded at boot: {}", img.modules.iter().map(|m| m.rsplit('/').next().unwrap_or(m)).collect::<Vec<_>>().join(" "));
    println!(
        "{} in {:.1} s",
        if img.built { "built" } else { "cached" },
        img.elapsed.as_secs_f64()
    );
    println!("accelerator: {}", vm::accel(&img).name());
    Ok(())
}

fn configure(common: &CommonArgs) -> Result<Vm> {
    check()?;
    let bin = match &common.bin {
        Some(b) => b.clone(),
        None => {
            crate::run_cargo(crate::cargo().args(["build", "--release", "-p", "baton-agent"]))?;
            crate::target_dir()?.join("release/baton")
        }
    };
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    let modules: Vec<&str> = common.modules.iter().map(String::as_str).collect();
    let mut vm = Vm::builder().nodes(common.nodes).lun_mib(common.lun_mib).baton(bin).modules(&modules);
    for kv in &common.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
        vm = vm.env(k, v);
    }
    Ok(vm)
}

fn run_script(args: RunArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.script).with_context(|| format!("reading {}", args.script.display()))?;
    let name = args.script.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
    let vm = configure(&args.common)?.name(&name).scenario(text).timeout(Duration::from_secs(args.timeout)).stream(true).keep(true);
    let out = vm.run();
    if args.serial {
        eprintln!("--- serial console ---\n{}", out.serial_log);
    }
    let fmt = |d: Option<Duration>| d.map(|d| format!("{:.1} s", d.as_secs_f64())).unwrap_or_else(|| "-".into());
    eprintln!(
        "xtask: vm: {} {} ({}), boot to scenario {}, scenario {}, total {:.1} s; exit status {}",
        out.kernel_release,
        out.accel.name(),
        out.disks.lines().map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("=")).collect::<Vec<_>>().join(" "),
        fmt(out.boot),
        fmt(out.scenario_time),
        out.total.as_secs_f64(),
        out.status
    );
    eprintln!("xtask: vm: files in {} (console: {})", out.files_dir.display(), out.run_dir.join("serial.log").display());
    std::process::exit(out.status);
}

fn shell(args: CommonArgs) -> Result<()> {
    let vm = configure(&args)?.name("shell").shell(true).timeout(Duration::from_secs(24 * 3600));
    eprintln!("xtask: vm: booting; the shell comes up after the target and the logins (Ctrl-A x quits qemu)");
    let out = vm.run();
    eprintln!("xtask: vm: shared directory {}", out.run_dir.display());
    Ok(())
}
