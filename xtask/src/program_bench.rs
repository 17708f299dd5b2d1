//! `cargo xtask bench program`: runs `pcc-bench program` (it needs the BPF object, which
//! xtask must not link: xtask builds before the BPF toolchain is installed) and writes its
//! figures into BENCHMARKS.md.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

fn ns(v: &Value) -> String {
    format!("{:.0} ns", v.as_f64().unwrap_or(f64::NAN))
}

pub fn section(report: &Value, command: &str, when: &str) -> String {
    let mut s = String::from("## Program cost\n\n");
    let _ = writeln!(
        s,
        "Per-packet cost of pcc's XDP programs, run by the kernel on crafted frames (BPF_PROG_TEST_RUN), beside a program that only returns XDP_DROP. Each figure is the median of {} single runs on a fresh frame (repeat would feed the program its own rewritten output), timed by the kernel; the floor is measured the same way, so the difference is pcc's own work.\n",
        report["samples"]
    );
    let _ = writeln!(s, "- Command: `{command}`\n- When and where: {when}\n");
    s.push_str("| path | median | p90 | vs floor |\n| --- | ---: | ---: | ---: |\n");
    let floor = report["costs"][0]["median_ns"].as_f64().unwrap_or(1.0);
    for c in report["costs"].as_array().into_iter().flatten() {
        let m = c["median_ns"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1}x |",
            c["path"].as_str().unwrap_or("?"),
            ns(&c["median_ns"]),
            ns(&c["p90_ns"]),
            m / floor
        );
    }
    let _ = writeln!(
        s,
        "\nConntrack map memory (CT_OUT + CT_IN, preallocated, `bytes_memlock`): {:.0} bytes per connection, {:.0} MiB for 1M connections.\n",
        report["map_bytes_per_connection"]
            .as_f64()
            .unwrap_or(f64::NAN),
        report["map_mib_for_1m"].as_f64().unwrap_or(f64::NAN)
    );
    s.push_str("| connections in the table | established TCP | new connection | new connections/s (one core) |\n| ---: | ---: | ---: | ---: |\n");
    for f in report["fill_levels"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} |",
            f["connections"],
            ns(&f["established_ns"]),
            ns(&f["new_connection_ns"]),
            f["new_per_second"].as_f64().unwrap_or(0.0)
        );
    }
    s.push_str("\nNAT ports towards one server running short (one WAN, 500 new connections to the same server:port; 16 tries per connection):\n\n| ports taken | opened | `nat_ports_exhausted` drops | median cost |\n| ---: | ---: | ---: | ---: |\n");
    for p in report["port_shortage"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {}% | {} | {} | {} |",
            p["ports_taken_pct"],
            p["opened"],
            p["exhausted_drops"],
            ns(&p["median_ns"])
        );
    }
    s
}

pub fn run(samples: usize, out: Option<PathBuf>, no_build: bool) -> Result<()> {
    ensure!(
        pcc_tests::is_root(),
        "the benchmark needs root (it loads BPF programs)"
    );
    crate::prepare(no_build)?;
    let bin = crate::root().join("target/release/pcc-bench");
    let output = Command::new(&bin)
        .args(["program", "--samples", &samples.to_string()])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        output.status.success(),
        "pcc-bench program failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).context("pcc-bench JSON")?;
    let mut command = String::from("cargo xtask bench program");
    if samples != 20_000 {
        command += &format!(" --samples {samples}");
    }
    let m = pcc_tests::bench::MachineInfo::probe_for(Some(&bin));
    let when = m.when_and_where();
    let section = section(&report, &command, &when);
    let path = crate::benchmarks_file(out);
    pcc_tests::bench::update_section(&path, "Program cost", &section)?;
    print!("{section}");
    Ok(())
}
