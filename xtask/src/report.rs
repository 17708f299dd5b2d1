//! `cargo xtask report`: the QoS comparison a PCC study publishes — each WAN alone, then
//! both balanced by pcc — on the lab's shaped lines: throughput, packet loss, delay and
//! jitter with their TIPHON categories, as text, JSON and an SVG chart. `--compare` runs the
//! same workload through every balancing method on equal and on unequal lines, the question
//! such studies end on, and writes its table to BENCHMARKS.md too.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use clap::Args;
use pcc_common::qos::{Tiphon, delay_and_jitter};
use pcc_tests::{Lab, WAN_NAMES};
use serde::Serialize;

#[derive(Args)]
pub struct ReportArgs {
    /// Seconds of load per scenario (5..=300).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Line rate of each ISP in Mbit/s (tc tbf, both directions).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Concurrent downloads per client (3 clients).
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Where report.txt, report.json and report.svg go.
    #[arg(long, default_value = "target/report")]
    out: PathBuf,
    /// Skip xtask/setup.sh and the pcc-ctl build.
    #[arg(long)]
    no_build: bool,
    /// Compare the balancing methods (pcc, nth, ecmp, least-loaded) on equal lines and on
    /// lines of RATE and RATE/2, instead of each WAN alone vs pcc.
    #[arg(long)]
    compare: bool,
    /// With --compare: where the "Method comparison" section goes (default: BENCHMARKS.md).
    #[arg(long, value_name = "PATH")]
    benchmarks_out: Option<PathBuf>,
}

/// One scenario's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub scenario: String,
    pub wans: Vec<String>,
    pub capacity_mbps: f64,
    pub throughput_mbps: f64,
    /// Download Mbit/s per WAN (rx).
    pub per_wan_mbps: Vec<(String, f64)>,
    pub loss: f64,
    pub delay_ms: f64,
    pub jitter_ms: f64,
    pub throughput_category: &'static str,
    pub loss_category: &'static str,
    pub delay_category: &'static str,
    pub jitter_category: &'static str,
    /// The video-like stream's rate (asked: `VIDEO_BYTES_PER_SEC`), Mbit/s.
    pub video_mbps: f64,
}

/// The video-like stream: a 4 Mbit/s paced download for the whole run (HD video).
const VIDEO_BYTES_PER_SEC: u64 = 500_000;

impl Row {
    fn new(
        scenario: &str,
        wans: &[&str],
        capacity: f64,
        per_wan: Vec<(String, f64)>,
        rtts: &[Option<f64>],
    ) -> Row {
        let throughput: f64 = per_wan.iter().map(|(_, m)| m).sum();
        let (delay, jitter, loss) = delay_and_jitter(rtts);
        Row {
            scenario: scenario.into(),
            wans: wans.iter().map(ToString::to_string).collect(),
            capacity_mbps: capacity,
            throughput_mbps: throughput,
            per_wan_mbps: per_wan,
            loss,
            delay_ms: delay,
            jitter_ms: jitter,
            throughput_category: Tiphon::throughput(throughput / capacity).name(),
            loss_category: Tiphon::packet_loss(loss).name(),
            delay_category: Tiphon::delay(delay).name(),
            jitter_category: Tiphon::jitter(jitter).name(),
            video_mbps: 0.0,
        }
    }
}

/// RTTs (ms) of `ping` output, by sequence number; missing ones are losses.
pub fn parse_ping(text: &str, count: usize) -> Vec<Option<f64>> {
    let mut rtts = vec![None; count];
    for line in text.lines() {
        let seq = line
            .split("icmp_seq=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next()?.parse::<usize>().ok());
        let time = line
            .split("time=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
        if let (Some(seq), Some(time)) = (seq, time)
            && (1..=count).contains(&seq)
        {
            rtts[seq - 1] = Some(time);
        }
    }
    rtts
}

pub fn render_text(rows: &[Row], rate: u32) -> String {
    render_table(
        rows,
        &format!("QoS per network, lines shaped to {rate} Mbit/s (TIPHON category in brackets)"),
    )
}

fn render_table(rows: &[Row], title: &str) -> String {
    let mut out = format!("{title}\n");
    let _ = writeln!(
        out,
        "{:<30} {:>24} {:>20} {:>22} {:>20} {:>7}   per-WAN download",
        "network", "throughput Mbit/s", "packet loss", "delay ms", "jitter ms", "video"
    );
    for r in rows {
        let split: Vec<String> = r
            .per_wan_mbps
            .iter()
            .map(|(w, m)| format!("{w} {m:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<30} {:>9.2} ({:>11}) {:>6.2}% ({:>11}) {:>8.2} ({:>11}) {:>6.2} ({:>11}) {:>7.2}   {}",
            r.scenario,
            r.throughput_mbps,
            r.throughput_category,
            r.loss * 100.0,
            r.loss_category,
            r.delay_ms,
            r.delay_category,
            r.jitter_ms,
            r.jitter_category,
            r.video_mbps,
            split.join(", ")
        );
    }
    out
}

/// A grouped bar chart: one group per figure, one bar per network, with values and TIPHON
/// categories written on the bars. Plain SVG, so it renders anywhere (README included).
/// One figure of the chart: its name, unit, and a row's value with its TIPHON category.
type Figure = (&'static str, &'static str, fn(&Row) -> (f64, &'static str));

pub fn render_svg(rows: &[Row]) -> String {
    let figures: [Figure; 4] = [
        ("Throughput", "Mbit/s", |r| {
            (r.throughput_mbps, r.throughput_category)
        }),
        ("Packet loss", "%", |r| (r.loss * 100.0, r.loss_category)),
        ("Delay", "ms", |r| (r.delay_ms, r.delay_category)),
        ("Jitter", "ms", |r| (r.jitter_ms, r.jitter_category)),
    ];
    let colors = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2"];
    let (w, h, top, bottom) = (960.0, 420.0, 60.0, 330.0);
    let group_w = w / figures.len() as f64;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="28" font-size="18" text-anchor="middle">pcc QoS per network (TIPHON category on each bar)</text>
"#,
        w / 2.0
    );
    for (g, (name, unit, value)) in figures.iter().enumerate() {
        let values: Vec<(f64, &str)> = rows.iter().map(value).collect();
        let max = values
            .iter()
            .map(|v| if v.0.is_finite() { v.0 } else { 0.0 })
            .fold(0.0, f64::max)
            .max(1e-9);
        let x0 = g as f64 * group_w + 20.0;
        let bar_w = (group_w - 40.0) / rows.len().max(1) as f64;
        for (i, (v, cat)) in values.iter().enumerate() {
            let v = if v.is_finite() { *v } else { 0.0 };
            let bh = (bottom - top) * v / max;
            let x = x0 + i as f64 * bar_w;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{}"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{v:.2}</text>
<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{cat}</text>
"#,
                bottom - bh,
                bar_w - 6.0,
                colors[i % colors.len()],
                x + (bar_w - 6.0) / 2.0,
                bottom - bh - 16.0,
                x + (bar_w - 6.0) / 2.0,
                bottom - bh - 4.0
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{name} ({unit})</text>"#,
            x0 + (group_w - 40.0) / 2.0,
            bottom + 22.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let x = 20.0 + i as f64 * 230.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            h - 40.0,
            colors[i % colors.len()],
            x + 18.0,
            h - 30.0,
            r.scenario
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The router as one with only some of the lab's lines: the others' default routes leave the
/// main table while a scenario runs (pcc balances only what the kernel routes through its own
/// WANs; a lower-metric default route through another line would take everything), and come
/// back with their gateway and metric when it ends.
struct OnlyLines<'a> {
    lab: &'a Lab,
    removed: Vec<usize>,
}

impl<'a> OnlyLines<'a> {
    fn take(lab: &'a Lab, wans: &[&str]) -> Result<Self> {
        let mut lines = OnlyLines {
            lab,
            removed: Vec::new(),
        };
        for (k, name) in WAN_NAMES.iter().enumerate() {
            if !wans.contains(name) {
                lab.run("router", &["ip", "route", "del", "default", "dev", name])?;
                lines.removed.push(k);
            }
        }
        Ok(lines)
    }
}

impl Drop for OnlyLines<'_> {
    fn drop(&mut self) {
        let Self { lab, removed } = self;
        for &k in removed.iter() {
            let (gateway, metric) = (lab.isp_addr(k).to_string(), (100 * (k + 1)).to_string());
            let args = [
                "ip",
                "route",
                "add",
                "default",
                "via",
                &gateway,
                "dev",
                WAN_NAMES[k],
            ];
            if let Err(e) = lab.run("router", &[&args[..], &["metric", &metric]].concat()) {
                eprintln!(
                    "xtask report: restoring the default route of {}: {e:#}",
                    WAN_NAMES[k]
                );
            }
        }
    }
}

/// Runs one scenario: pcc over `wans` (with `extra` options), every client downloading, c1
/// watching a video-like stream and pinging a server; `capacity` is the lines' sum.
fn scenario(
    lab: &Lab,
    name: &str,
    wans: &[&str],
    extra: &[&str],
    capacity: f64,
    args: &ReportArgs,
) -> Result<Row> {
    let wan_arg = wans.join(",");
    let mut pcc_args = vec!["--wan", wan_arg.as_str()];
    pcc_args.extend_from_slice(extra);
    let _lines = OnlyLines::take(lab, wans)?;
    let pcc = lab.start_pcc(&pcc_args)?;
    let file = lab.http_file(256 << 20)?;
    let before = pcc.metrics()?;
    let started = Instant::now();
    let secs = args.seconds.to_string();
    let mut downloads = Vec::new();
    for (c, client) in lab.client_names().iter().enumerate() {
        for s in 0..args.streams {
            let server = lab.server_addr((c * args.streams + s) % lab.server_count());
            let url = lab.url(server, &file);
            downloads.push(lab.spawn(
                client,
                &["curl", "-s", "-o", "/dev/null", "--max-time", &secs, &url],
            )?);
        }
    }
    let video_url = format!(
        "{}?rate={VIDEO_BYTES_PER_SEC}",
        lab.url(lab.server_addr(lab.server_count() - 1), &file)
    );
    let video = lab.spawn(
        "c1",
        &[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            "--max-time",
            &secs,
            &video_url,
        ],
    )?;
    // Probe while the lines are loaded, as the study did: 20 pings a second.
    let count = (args.seconds * 20).saturating_sub(20).max(20) as usize;
    let ping = lab.exec_opts(
        "c1",
        &[
            "ping",
            "-n",
            "-i",
            "0.05",
            "-W",
            "1",
            "-c",
            &count.to_string(),
            &lab.server_addr(0).to_string(),
        ],
        None,
        Duration::from_secs(args.seconds + 15),
    )?;
    let rtts = parse_ping(&String::from_utf8_lossy(&ping.stdout), count);
    let remaining = Duration::from_secs(args.seconds).saturating_sub(started.elapsed());
    std::thread::sleep(remaining);
    let after = pcc.metrics()?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(downloads);
    let video = video.finish(Duration::from_secs(5));
    let video_bytes: f64 = String::from_utf8_lossy(&video.stdout)
        .trim()
        .parse()
        .unwrap_or(0.0);
    pcc.stop()?;
    let per_wan: Vec<(String, f64)> = wans
        .iter()
        .map(|w| {
            let bytes =
                after.wan("pcc_wan_rx_bytes_total", w) - before.wan("pcc_wan_rx_bytes_total", w);
            (w.to_string(), bytes * 8.0 / elapsed / 1e6)
        })
        .collect();
    let mut row = Row::new(name, wans, capacity, per_wan, &rtts);
    row.video_mbps = video_bytes * 8.0 / elapsed / 1e6;
    Ok(row)
}

pub fn run(args: &ReportArgs) -> Result<()> {
    ensure!(
        (5..=300).contains(&args.seconds),
        "--seconds must be 5..=300"
    );
    crate::prepare(args.no_build)?;
    if args.compare {
        return compare(args);
    }
    let lab = shaped_lab(args.rate)?;
    lab.start_http()?;
    let mut rows = Vec::new();
    for (name, wans) in [
        (format!("{} alone", WAN_NAMES[0]), vec![WAN_NAMES[0]]),
        (format!("{} alone", WAN_NAMES[1]), vec![WAN_NAMES[1]]),
        ("pcc balanced".to_string(), vec![WAN_NAMES[0], WAN_NAMES[1]]),
    ] {
        eprintln!("xtask report: {name}: {} s of load", args.seconds);
        let capacity = f64::from(args.rate) * wans.len() as f64;
        rows.push(scenario(&lab, &name, &wans, &[], capacity, args)?);
    }
    drop(lab);
    let text = render_text(&rows, args.rate);
    let out = write_outputs(args, "report", &rows, &text)?;
    print!("{text}");
    eprintln!(
        "xtask report: written to {}/report.{{txt,json,svg}}",
        out.display()
    );
    Ok(())
}

/// The report's lab: 3 clients, 12 servers, both lines shaped to `mbit`.
fn shaped_lab(mbit: u32) -> Result<Lab> {
    Lab::builder()
        .clients(3)
        .servers(12)
        .shaped(Some(mbit))
        .build()
        .context("building the lab")
}

/// Writes `STEM.txt`, `STEM.json` and `STEM.svg` into `--out`; returns that directory.
fn write_outputs(args: &ReportArgs, stem: &str, rows: &[Row], text: &str) -> Result<PathBuf> {
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        crate::root().join(&args.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join(format!("{stem}.txt")), text)?;
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(rows)? + "\n",
    )?;
    std::fs::write(out.join(format!("{stem}.svg")), render_svg(rows))?;
    Ok(out)
}

/// `--compare`: every method on equal lines (RATE/RATE) and unequal ones (RATE/RATE÷2).
fn compare(args: &ReportArgs) -> Result<()> {
    let (fast, slow) = (args.rate, (args.rate / 2).max(1));
    let mut rows = Vec::new();
    for (setup, rates) in [("equal", [fast, fast]), ("unequal", [fast, slow])] {
        let lab = shaped_lab(fast)?;
        lab.shape(1, rates[1])?;
        lab.start_http()?;
        let line_rates = format!("wan0={},wan1={}", rates[0], rates[1]);
        for method in pcc_common::Method::ALL {
            let name = format!("{} ({setup} {}/{})", method.name(), rates[0], rates[1]);
            eprintln!("xtask report: {name}: {} s of load", args.seconds);
            let mut extra = vec!["--method", method.name()];
            if method == pcc_common::Method::LeastLoaded {
                extra.extend(["--line-rate", line_rates.as_str()]);
            }
            let capacity = f64::from(rates[0] + rates[1]);
            rows.push(scenario(&lab, &name, &WAN_NAMES, &extra, capacity, args)?);
        }
    }
    let title = format!(
        "Balancing methods on two lines ({fast}/{fast} and {fast}/{slow} Mbit/s), TIPHON category in brackets"
    );
    let text = render_table(&rows, &title);
    let out = write_outputs(args, "compare", &rows, &text)?;
    let mut command = String::from("cargo xtask report --compare");
    if args.seconds != 20 {
        command += &format!(" --seconds {}", args.seconds);
    }
    let bin = crate::root().join("target/release/pcc-ctl");
    let when = pcc_tests::bench::MachineInfo::probe_for(Some(&bin)).when_and_where();
    let section = compare_section(&rows, args, &command, &when);
    let path = crate::benchmarks_file(args.benchmarks_out.clone());
    pcc_tests::bench::update_section(&path, "Method comparison", &section)?;
    print!("{text}");
    eprintln!(
        "xtask report: written to {}/compare.{{txt,json,svg}} and {}",
        out.display(),
        path.display()
    );
    Ok(())
}

fn compare_section(rows: &[Row], args: &ReportArgs, command: &str, when: &str) -> String {
    let mut s = String::from("## Method comparison\n\n");
    let _ = writeln!(
        s,
        "The same workload through each balancing method: 3 clients × {} concurrent downloads, a 4 Mbit/s paced download as a video stream and 20 pings/s from c1, {} s per run, on lines shaped with `tc tbf` (equal, then the second at half the rate). Throughput is what crossed the two WANs towards the LAN; loss, delay and jitter come from the pings under load (TIPHON categories as in `cargo xtask report`).\n",
        args.streams, args.seconds
    );
    let _ = writeln!(s, "- Command: `{command}`\n- When and where: {when}\n");
    s.push_str("| method (lines, Mbit/s) | throughput Mbit/s | of capacity | wan0 / wan1 Mbit/s | video Mbit/s | loss | delay ms | jitter ms |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for r in rows {
        let split: Vec<String> = r
            .per_wan_mbps
            .iter()
            .map(|(_, m)| format!("{m:.1}"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.1} ({}) | {:.0} % | {} | {:.2} | {:.2} % ({}) | {:.1} ({}) | {:.1} ({}) |",
            r.scenario,
            r.throughput_mbps,
            r.throughput_category,
            100.0 * r.throughput_mbps / r.capacity_mbps,
            split.join(" / "),
            r.video_mbps,
            r.loss * 100.0,
            r.loss_category,
            r.delay_ms,
            r.delay_category,
            r.jitter_ms,
            r.jitter_category
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_gives_rtts_and_losses() {
        let text = "64 bytes from 203.0.113.10: icmp_seq=1 ttl=62 time=0.105 ms\n\
                    64 bytes from 203.0.113.10: icmp_seq=3 ttl=62 time=12.5 ms\n\
                    --- 203.0.113.10 ping statistics ---\n";
        assert_eq!(parse_ping(text, 3), vec![Some(0.105), None, Some(12.5)]);
    }

    #[test]
    fn rows_get_categories_and_render() {
        let rows = vec![
            Row::new(
                "wan0 alone",
                &["wan0"],
                20.0,
                vec![("wan0".into(), 19.5)],
                &[Some(20.0), Some(24.0)],
            ),
            Row::new(
                "pcc balanced",
                &["wan0", "wan1"],
                40.0,
                vec![("wan0".into(), 19.0), ("wan1".into(), 18.0)],
                &[Some(30.0), None],
            ),
        ];
        assert_eq!(rows[0].throughput_category, "good");
        assert_eq!(
            (
                rows[0].loss_category,
                rows[0].delay_category,
                rows[0].jitter_category
            ),
            ("very good", "very good", "good")
        );
        assert_eq!(rows[1].loss_category, "poor", "50 % loss");
        let text = render_text(&rows, 20);
        assert!(
            text.contains("pcc balanced") && text.contains("37.00"),
            "{text}"
        );
        let svg = render_svg(&rows);
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>") && svg.contains("Jitter")
        );
    }

    /// Smoke run of the whole command in the lab (root only): every file, every scenario,
    /// every figure; no timing is asserted.
    #[test]
    fn report_runs_and_writes_every_figure() {
        if !pcc_tests::is_root() {
            eprintln!("SKIP report smoke run: needs root");
            return;
        }
        let out = std::env::temp_dir().join(format!("pcc-report-smoke-{}", std::process::id()));
        run(&ReportArgs {
            seconds: 5,
            rate: 20,
            streams: 1,
            out: out.clone(),
            no_build: true,
            compare: false,
            benchmarks_out: None,
        })
        .expect("cargo xtask report");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        let rows = json.as_array().expect("rows");
        assert_eq!(rows.len(), 3, "wan0 alone, wan1 alone, pcc balanced");
        for row in rows {
            assert!(
                row["throughput_mbps"].as_f64().is_some_and(|t| t > 0.0),
                "{row}"
            );
        }
        let txt = std::fs::read_to_string(out.join("report.txt")).unwrap();
        assert!(txt.contains("pcc balanced"), "{txt}");
        let svg = std::fs::read_to_string(out.join("report.svg")).unwrap();
        assert!(svg.starts_with("<svg"));
        let _ = std::fs::remove_dir_all(&out);
    }

    /// Smoke run of `--compare` (root only): every method on both line setups, every figure,
    /// the BENCHMARKS section written; no timing is asserted.
    #[test]
    fn compare_runs_every_method_on_both_line_setups() {
        if !pcc_tests::is_root() {
            eprintln!("SKIP compare smoke run: needs root");
            return;
        }
        let out = std::env::temp_dir().join(format!("pcc-compare-smoke-{}", std::process::id()));
        let bench = out.join("BENCHMARKS.md");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(&bench, "# benchmarks\n").unwrap();
        run(&ReportArgs {
            seconds: 5,
            rate: 20,
            streams: 1,
            out: out.clone(),
            no_build: true,
            compare: true,
            benchmarks_out: Some(bench.clone()),
        })
        .expect("cargo xtask report --compare");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap())
                .unwrap();
        let rows = json.as_array().expect("rows");
        assert_eq!(rows.len(), 8, "4 methods x 2 line setups");
        for m in ["pcc", "nth", "ecmp", "least-loaded"] {
            for setup in ["equal 20/20", "unequal 20/10"] {
                let name = format!("{m} ({setup})");
                let row = rows
                    .iter()
                    .find(|r| r["scenario"] == name.as_str())
                    .unwrap_or_else(|| panic!("no row {name}"));
                assert!(
                    row["throughput_mbps"].as_f64().is_some_and(|t| t > 0.0),
                    "{row}"
                );
                assert!(row["video_mbps"].as_f64().is_some(), "{row}");
            }
        }
        let md = std::fs::read_to_string(&bench).unwrap();
        assert!(
            md.contains("## Method comparison") && md.contains("least-loaded (unequal 20/10)"),
            "{md}"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
}
