//! `cargo xtask bench clinic`: the clinic of the PCC studies — 12 concurrent downloads from 3
//! clients over two 20 Mbit/s lines (tc tbf). The kernel as most routers run it (forwarding,
//! masquerade, one default route: everything on one line) against pcc over both lines:
//! aggregate Mbit/s and the per-line split. Writes the `## Clinic` section of BENCHMARKS.md.
use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::Lab;

/// Download Mbit/s per line, counted where the ISPs hand frames to the router (the same
/// place for both setups).
fn load(lab: &Lab, seconds: u64, streams: usize) -> Result<[f64; 2]> {
    lab.start_http()?;
    let file = lab.http_file(256 << 20)?;
    let before = [
        lab.link_stats("isp0", "up0")?,
        lab.link_stats("isp1", "up0")?,
    ];
    let started = Instant::now();
    let secs = seconds.to_string();
    let mut downloads = Vec::new();
    for (c, client) in lab.client_names().iter().enumerate() {
        for s in 0..streams {
            let url = lab.url(
                lab.server_addr((c * streams + s) % lab.server_count()),
                &file,
            );
            downloads.push(lab.spawn(
                client,
                &["curl", "-s", "-o", "/dev/null", "--max-time", &secs, &url],
            )?);
        }
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let after = [
        lab.link_stats("isp0", "up0")?,
        lab.link_stats("isp1", "up0")?,
    ];
    let elapsed = started.elapsed().as_secs_f64();
    drop(downloads);
    Ok([0, 1].map(|i| (after[i].tx_bytes - before[i].tx_bytes) as f64 * 8.0 / elapsed / 1e6))
}

/// Runs both setups; writes the section into `out` (BENCHMARKS.md, or a scratch file for the
/// smoke test) and returns it.
pub fn run(seconds: u64, rate: u32, out: &Path) -> Result<String> {
    ensure!(
        crate::is_root(),
        "the benchmark needs root (it creates network namespaces)"
    );
    ensure!((3..=300).contains(&seconds), "--seconds must be 3..=300");
    let builder = || Lab::builder().clients(3).servers(12).shaped(Some(rate));
    let kernel = {
        let lab = builder().build().context("building the lab")?;
        lab.enable_kernel_nat()?;
        load(&lab, seconds, 4)?
    };
    let pcc = {
        let lab = builder().build().context("building the lab")?;
        let pcc = lab.start_pcc(&[])?;
        let r = load(&lab, seconds, 4)?;
        pcc.stop()?;
        r
    };
    let m = crate::bench::MachineInfo::probe();
    let mut s = String::from(
        "## Clinic\n\nTwelve concurrent downloads (3 clients × 4, different servers) over two lines shaped to the clinic's rate with `tc tbf` in the ISPs. *Kernel*: the router forwards with nftables masquerade and its one default route (wan0), as a single-line router does. *pcc*: `pcc-ctl up --wan wan0,wan1` with defaults. Throughput is counted on the ISPs' links towards the router.\n\n",
    );
    let mut command = String::from("cargo xtask bench clinic");
    if seconds != 20 {
        command += &format!(" --seconds {seconds}");
    }
    if rate != 20 {
        command += &format!(" --rate {rate}");
    }
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(s, "- When and where: {}\n", m.when_and_where());
    let _ = writeln!(
        s,
        "| setup | aggregate Mbit/s | wan0 Mbit/s | wan1 Mbit/s | of {} Mbit/s capacity |\n| --- | ---: | ---: | ---: | ---: |",
        2 * rate
    );
    for (name, r) in [("kernel, one line", kernel), ("pcc, both lines", pcc)] {
        let total = r[0] + r[1];
        let _ = writeln!(
            s,
            "| {name} | {total:.1} | {:.1} | {:.1} | {:.0} % |",
            r[0],
            r[1],
            total / f64::from(2 * rate) * 100.0
        );
    }
    crate::bench::update_section(out, "Clinic", &s)?;
    Ok(s)
}
