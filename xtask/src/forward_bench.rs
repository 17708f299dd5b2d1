//! `cargo xtask bench forward`: see `pcc_tests::bench_forward` for what is measured.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use clap::Args;
use pcc_tests::bench_forward::{self, ForwardOpts};

#[derive(Args)]
pub struct ForwardArgs {
    /// Repetitions of each set-up (ceiling, kernel, pcc), 1..=20; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Length of each measuring window in seconds, 1..=60.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Offered rate of the CPU-cost measurement, packets/s.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Where to write the section (default: BENCHMARKS.md at the workspace root).
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
    /// Skip xtask/setup.sh and the pcc-ctl build (use the binary that is there or $PCC_CTL).
    #[arg(long)]
    no_build: bool,
}

pub fn run(a: ForwardArgs) -> Result<()> {
    let ForwardArgs {
        runs,
        seconds,
        rate,
        out,
        no_build,
    } = a;
    ensure!(
        pcc_tests::is_root(),
        "the benchmark needs root (it creates network namespaces)"
    );
    let pcc_ctl = crate::prepare(no_build)?;
    let mut command = String::from("cargo xtask bench forward");
    if runs != 3 {
        command += &format!(" --runs {runs}");
    }
    if seconds != 5.0 {
        command += &format!(" --seconds {seconds}");
    }
    if rate != 100_000 {
        command += &format!(" --rate {rate}");
    }
    let out = crate::benchmarks_file(out);
    let opts = ForwardOpts {
        runs,
        seconds,
        rate_pps: rate,
        pcc_ctl,
        verbose: true,
    };
    bench_forward::forward_to_file(&opts, &out, &command)?;
    let md = std::fs::read_to_string(&out)?;
    if let Some(start) = md.find("## Forwarding rate") {
        let section = &md[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |k| k + 4);
        println!("{}", section[..end].trim_end());
    }
    eprintln!("xtask bench forward: section written to {}", out.display());
    Ok(())
}
