//! `cargo xtask bench program`: runs `pcc-bench program` (it needs the BPF object, which
//! xtask must not link: xtask builds before the BPF toolchain is installed) and writes its
//! figures into BENCHMARKS.md.
use std::{fmt::Write as _, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

/// A count (medians of counts can be fractional only between two runs).
fn int(v: &Value) -> String {
    format!("{:.0}", v.as_f64().unwrap_or(f64::NAN))
}

fn ns(v: &Value) -> String {
    format!("{:.0} ns", v.as_f64().unwrap_or(f64::NAN))
}

pub fn section(report: &Value, runs: usize, command: &str, when: &str) -> String {
    let mut s = String::from("## Program cost\n\n");
    let _ = writeln!(
        s,
        "Per-packet cost of pcc's XDP programs, run by the kernel on crafted frames (BPF_PROG_TEST_RUN), beside a program that only returns XDP_DROP (the floor). Every figure is the median over {runs} runs of the benchmark (each its own process and maps) of that run's median.\n\n\
         - **Single runs**: {} runs of one packet each on a fresh copy of the frame, timed by the kernel. Every path can be measured this way, a new connection included; each run carries BPF_PROG_TEST_RUN's per-call overhead (clock reads, frame setup), which is in the floor too, so *net* = median − floor is pcc's own work.\n\
         - **Amortized**: `repeat` = {} runs per call on one frame (the kernel's mean per run), so that overhead is spread out; each run must do the whole job again, so the connections are set up with an identity translation (NAT address and port equal to the host's own) and the frame is sent with TTL 255: every run looks the connection up, updates its counters and timestamps, rewrites checksums, MACs and TTL and redirects. A new connection cannot repeat (the second run would find it established).\n",
        report["samples"], report["amortized_repeat"],
    );
    let _ = writeln!(s, "- Command: `{command}`\n- When and where: {when}\n");
    s.push_str("| path | single run: median | p90 | net of floor | vs floor | amortized: per run | vs floor |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    let floor = report["costs"][0]["median_ns"].as_f64().unwrap_or(1.0);
    let amortized = report["amortized"].as_array().cloned().unwrap_or_default();
    let amortized_floor = amortized
        .first()
        .and_then(|c| c["median_ns"].as_f64())
        .unwrap_or(f64::NAN);
    for (i, c) in report["costs"].as_array().into_iter().flatten().enumerate() {
        let path = c["path"].as_str().unwrap_or("?");
        let m = c["median_ns"].as_f64().unwrap_or(f64::NAN);
        let (am, am_ratio) = match amortized.iter().find(|a| a["path"] == c["path"]) {
            Some(a) => {
                let v = a["median_ns"].as_f64().unwrap_or(f64::NAN);
                (format!("{v:.0} ns"), format!("{:.1}x", v / amortized_floor))
            }
            None => ("—".into(), "—".into()),
        };
        let net = if i == 0 {
            "—".into()
        } else {
            format!("{:.0} ns", m - floor)
        };
        let _ = writeln!(
            s,
            "| {path} | {} | {} | {net} | {:.1}x | {am} | {am_ratio} |",
            ns(&c["median_ns"]),
            ns(&c["p90_ns"]),
            m / floor
        );
    }
    let _ = writeln!(
        s,
        "\nConntrack map memory (CT_OUT + CT_IN, the NAT bindings NAT_BIND_OUT + NAT_BIND_IN, HOST_CONNECTIONS (a fixed 2 MiB: 65536 hosts on each of 4 LANs), and the sweep's EXPIRY_SLOTS, two per connection; preallocated, `bytes_memlock`): {:.0} bytes per connection, {:.0} MiB for 1M connections.\n",
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
            int(&f["connections"]),
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
            int(&p["opened"]),
            int(&p["exhausted_drops"]),
            ns(&p["median_ns"])
        );
    }
    s
}

/// The reports of several runs merged field by field: numbers become their median, arrays
/// and objects are merged element by element, anything else is taken from the first run.
pub fn median_of(reports: &[Value]) -> Value {
    let Some(first) = reports.first() else {
        return Value::Null;
    };
    match first {
        Value::Number(_) => {
            let mut v: Vec<f64> = reports.iter().filter_map(Value::as_f64).collect();
            v.sort_by(f64::total_cmp);
            match v.len() {
                0 => first.clone(),
                n if n % 2 == 1 => serde_json::json!(v[n / 2]),
                n => serde_json::json!((v[n / 2 - 1] + v[n / 2]) / 2.0),
            }
        }
        Value::Array(items) => Value::Array(
            (0..items.len())
                .map(|i| {
                    let column: Vec<Value> =
                        reports.iter().filter_map(|r| r.get(i).cloned()).collect();
                    median_of(&column)
                })
                .collect(),
        ),
        Value::Object(fields) => Value::Object(
            fields
                .keys()
                .map(|k| {
                    let column: Vec<Value> =
                        reports.iter().filter_map(|r| r.get(k).cloned()).collect();
                    (k.clone(), median_of(&column))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

pub fn run(samples: usize, runs: usize, out: Option<PathBuf>, no_build: bool) -> Result<()> {
    ensure!(
        pcc_tests::is_root(),
        "the benchmark needs root (it loads BPF programs)"
    );
    crate::prepare(no_build)?;
    ensure!(runs >= 1, "--runs must be at least 1");
    let bin = crate::root().join("target/release/pcc-bench");
    let mut reports = Vec::new();
    for run in 1..=runs {
        eprintln!("bench program: run {run} of {runs}");
        let output = Command::new(&bin)
            .args(["program", "--samples", &samples.to_string()])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        ensure!(
            output.status.success(),
            "pcc-bench program failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        reports.push(serde_json::from_slice::<Value>(&output.stdout).context("pcc-bench JSON")?);
    }
    let report = median_of(&reports);
    let mut command = String::from("cargo xtask bench program");
    if samples != 20_000 {
        command += &format!(" --samples {samples}");
    }
    if runs != 3 {
        command += &format!(" --runs {runs}");
    }
    let m = pcc_tests::bench::MachineInfo::probe_for(Some(&bin));
    let when = m.when_and_where();
    let section = section(&report, runs, &command, &when);
    let path = crate::benchmarks_file(out);
    pcc_tests::bench::update_section(&path, "Program cost", &section)?;
    print!("{section}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn median_of_merges_runs_field_by_field() {
        let runs = [
            json!({"a": 1, "xs": [{"p": "x", "v": 10}], "s": "first"}),
            json!({"a": 5, "xs": [{"p": "x", "v": 30}], "s": "second"}),
            json!({"a": 3, "xs": [{"p": "x", "v": 20}], "s": "third"}),
        ];
        assert_eq!(
            median_of(&runs),
            json!({"a": 3.0, "xs": [{"p": "x", "v": 20.0}], "s": "first"})
        );
        assert_eq!(median_of(&runs[..2])["a"], json!(3.0));
    }
}
