//! `cargo xtask setup | test | lab | bench`: the project's build, test and demo entry points.

mod bench;
mod forward_bench;
mod lab;
mod program_bench;
mod report;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "pcc build, test and lab tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (runs xtask/setup.sh; idempotent).
    Setup,
    /// Setup, `cargo +nightly fmt --check` and `cargo clippy -D warnings`, build pcc-ctl
    /// (release), then `cargo test --release` over the workspace
    /// (unit tests plus the network-namespace integration tests, which need root).
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. `-- --test split_equal` or
        /// `-- -- --nocapture`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build a shaped lab, run pcc-ctl in it, drive traffic from every client and print how
    /// connections and bytes spread over wan0/wan1.
    Lab(lab::LabArgs),
    /// Benchmarks that write their results into BENCHMARKS.md.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// QoS report: each WAN alone and both balanced on shaped lines — throughput, loss, delay,
    /// jitter with TIPHON categories, as text, JSON and an SVG chart.
    Report(report::ReportArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Setup => setup(),
        Cmd::Test { cargo_args } => test(&cargo_args),
        Cmd::Lab(args) => lab::run(args),
        Cmd::Bench(cmd) => bench::run(cmd),
        Cmd::Report(args) => report::run(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root (xtask's parent directory).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask has a parent directory")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

pub(crate) fn status(mut cmd: Command, what: &str) -> Result<()> {
    eprintln!("xtask: {what}");
    let st = cmd.status().with_context(|| format!("starting: {what}"))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

pub(crate) fn setup() -> Result<()> {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("xtask/setup.sh")).current_dir(root());
    status(cmd, "bash xtask/setup.sh")
}

/// Unless `no_build`: installs what is missing and builds pcc-ctl and pcc-bench. Returns the binary the
/// lab should run, unless `$PCC_CTL` already names one.
pub(crate) fn prepare(no_build: bool) -> Result<Option<PathBuf>> {
    if no_build {
        return Ok(None);
    }
    setup()?;
    let bin = build_pcc_ctl()?;
    Ok(std::env::var_os("PCC_CTL").is_none().then_some(bin))
}

/// Where a benchmark writes its section: `--out`, else BENCHMARKS.md at the root.
pub(crate) fn benchmarks_file(out: Option<PathBuf>) -> PathBuf {
    out.unwrap_or_else(|| root().join("BENCHMARKS.md"))
}

/// Builds pcc-ctl and, beside it, `pcc-bench` (the benchmarks' generator, sinks and program
/// costs, its own crate); returns pcc-ctl's path.
pub(crate) fn build_pcc_ctl() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "pcc-ctl", "-p", "pcc-bench"]);
    status(cmd, "cargo build --release -p pcc-ctl -p pcc-bench")?;
    Ok(target_dir().join("release/pcc-ctl"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// The habits CI enforces before anything is built or run: the formatting (`rustfmt.toml`
/// needs nightly rustfmt) and clippy with the workspace lints, warnings as errors.
fn check() -> Result<()> {
    // The rustup proxy, not `$CARGO` (that is the toolchain's own cargo, deaf to `+nightly`).
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fmt", "--all", "--", "--check"])
        .current_dir(root());
    status(cmd, "cargo +nightly fmt --all -- --check")?;
    let mut cmd = cargo();
    cmd.args([
        "clippy",
        "--release",
        "--workspace",
        "--exclude",
        "pcc-ebpf",
        "--tests",
        "--",
        "-D",
        "warnings",
    ]);
    status(
        cmd,
        "cargo clippy --release --workspace --exclude pcc-ebpf --tests -- -D warnings",
    )
}

fn test(extra: &[String]) -> Result<()> {
    setup()?;
    check()?;
    let bin = build_pcc_ctl()?;
    let mut cmd = cargo();
    // pcc-ebpf only builds for the bpf target (pcc-ctl's build script does that).
    cmd.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "pcc-ebpf",
        "--no-fail-fast",
    ])
    .args(extra);
    if std::env::var_os("PCC_CTL").is_none() {
        cmd.env("PCC_CTL", &bin);
    }
    eprintln!("xtask: cargo test --release --workspace --exclude pcc-ebpf --no-fail-fast");
    let st = cmd.status().context("starting cargo test")?;
    if !st.success() {
        // Nothing after cargo's own summary: CI reads its closing lines.
        std::process::exit(st.code().unwrap_or(101));
    }
    Ok(())
}
