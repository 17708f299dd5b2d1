//! `cargo xtask bench failover`: see `pcc_tests::bench` for what is measured.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::{Args, Subcommand};
use pcc_tests::bench::{self, FailoverOpts};

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Cut isp0 while UDP flows run (internet dead, then carrier loss) and measure the reply gap
    /// of the flows on wan0 and how fast pcc-ctl sees wan0 go down and come back. Writes the
    /// `## Failover` section of BENCHMARKS.md.
    Failover(FailoverArgs),
    /// Per-packet cost of the XDP programs (BPF_PROG_TEST_RUN) beside the XDP_DROP floor,
    /// conntrack at 0/100k/1M connections, map memory, NAT port shortage. Writes the
    /// `## Program cost` section of BENCHMARKS.md.
    Program(ProgramArgs),
    /// Forwarding rate of the lab router (max pps, CPU ns per packet at a fixed rate): pcc vs
    /// the kernel (ip_forward, ECMP, nft masquerade) vs the generator's ceiling. Writes the
    /// `## Forwarding rate` section of BENCHMARKS.md.
    Forward(crate::forward_bench::ForwardArgs),
    /// pcc-ctl's RSS and CPU at idle and while ~100k connections churn. Writes the
    /// `## Controller` section of BENCHMARKS.md.
    Controller(ControllerArgs),
    /// 12 downloads from 3 clients over two shaped lines: the kernel on one line vs pcc on
    /// both. Writes the `## Clinic` section of BENCHMARKS.md.
    Clinic(ClinicArgs),
}

#[derive(Args)]
pub struct ClinicArgs {
    /// Seconds of load per setup (3..=300).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Line rate in Mbit/s.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Where to write the section (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Skip xtask/setup.sh and the build.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct ControllerArgs {
    /// Seconds of each measurement (10..=600).
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Distinct UDP flows the churn cycles through (1000..=200000).
    #[arg(long, default_value_t = 100_000)]
    flows: u32,
    /// Where to write the section (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Skip xtask/setup.sh and the build.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct ProgramArgs {
    /// Samples per figure (the median of single runs is reported).
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Runs of the whole benchmark, each in its own process; each figure is their median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    runs: u16,
    /// Where to write the section (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Skip xtask/setup.sh and the build.
    #[arg(long)]
    no_build: bool,
}

#[derive(Args)]
pub struct FailoverArgs {
    /// Runs with isp0's internet cut (nftables drop; link and ARP stay up), 1..=20.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs with isp0's carrier cut (`ip link set up0 down` in isp0), 0..=20.
    #[arg(long, default_value_t = 1)]
    carrier_runs: usize,
    /// Shape the ISP lines with tbf at this many Mbit/s (default: unshaped).
    #[arg(long, value_name = "MBIT")]
    shape: Option<u32>,
    /// Where to write the section (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Skip xtask/setup.sh and the pcc-ctl build (use the binary that is there or $PCC_CTL).
    #[arg(long)]
    no_build: bool,
    /// Further options for `pcc-ctl up` (e.g. `--probe-interval 20`); recorded in the section.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PCC-CTL OPTIONS"
    )]
    pcc_args: Vec<String>,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Failover(a) => failover(a),
        BenchCmd::Program(a) => {
            crate::program_bench::run(a.samples, a.runs.into(), a.out, a.no_build)
        }
        BenchCmd::Forward(a) => crate::forward_bench::run(a),
        BenchCmd::Controller(a) => controller(a),
        BenchCmd::Clinic(a) => clinic(a),
    }
}

fn failover(a: FailoverArgs) -> Result<()> {
    let FailoverArgs {
        runs,
        carrier_runs,
        shape,
        out,
        no_build,
        pcc_args,
    } = a;
    ensure!((1..=20).contains(&runs), "--runs must be 1..=20");
    ensure!(carrier_runs <= 20, "--carrier-runs must be 0..=20");
    ensure!(
        pcc_tests::is_root(),
        "the benchmark needs root (it creates network namespaces)"
    );
    let pcc_ctl = crate::prepare(no_build)?;
    // The command line as the section will show it (defaults left out).
    let mut command = String::from("cargo xtask bench failover");
    if runs != 5 {
        command += &format!(" --runs {runs}");
    }
    if carrier_runs != 1 {
        command += &format!(" --carrier-runs {carrier_runs}");
    }
    if let Some(m) = shape {
        command += &format!(" --shape {m}");
    }
    if !pcc_args.is_empty() {
        command += &format!(" {}", pcc_args.join(" "));
    }
    let out = crate::benchmarks_file(out);
    let opts = FailoverOpts {
        runs,
        carrier_runs,
        shaped: shape,
        pcc_ctl,
        pcc_args,
        verbose: true,
    };
    let report = bench::failover_to_file(&opts, &out, &command)?;
    let md = std::fs::read_to_string(&out)?;
    if let Some(start) = md.find("## Failover") {
        let section = &md[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |k| k + 4);
        println!("{}", section[..end].trim_end());
    }
    eprintln!(
        "xtask bench: {} runs, section written to {}",
        report.runs.len(),
        out.display()
    );
    Ok(())
}

fn controller(a: ControllerArgs) -> Result<()> {
    crate::prepare(a.no_build)?;
    let out = crate::benchmarks_file(a.out);
    print!(
        "{}",
        pcc_tests::controller_bench::run(a.seconds, a.flows, &out)?
    );
    Ok(())
}

fn clinic(a: ClinicArgs) -> Result<()> {
    crate::prepare(a.no_build)?;
    let out = crate::benchmarks_file(a.out);
    print!("{}", pcc_tests::clinic_bench::run(a.seconds, a.rate, &out)?);
    Ok(())
}
