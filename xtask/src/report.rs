//! `cargo xtask report`: the QoS comparison a PCC study publishes — each WAN alone, then
//! both balanced by pcc — on the lab's shaped lines: throughput, packet loss, delay and
//! jitter with their TIPHON categories, as text, JSON and an SVG chart.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
}

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
            wans: wans.iter().map(|w| w.to_string()).collect(),
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
    let mut out =
        format!("QoS per network, lines shaped to {rate} Mbit/s (TIPHON category in brackets)\n");
    let _ = writeln!(
        out,
        "{:<22} {:>24} {:>20} {:>22} {:>20}   per-WAN download",
        "network", "throughput Mbit/s", "packet loss", "delay ms", "jitter ms"
    );
    for r in rows {
        let split: Vec<String> = r
            .per_wan_mbps
            .iter()
            .map(|(w, m)| format!("{w} {m:.1}"))
            .collect();
        let _ = writeln!(
            out,
            "{:<22} {:>9.2} ({:>11}) {:>6.2}% ({:>11}) {:>8.2} ({:>11}) {:>6.2} ({:>11})   {}",
            r.scenario,
            r.throughput_mbps,
            r.throughput_category,
            r.loss * 100.0,
            r.loss_category,
            r.delay_ms,
            r.delay_category,
            r.jitter_ms,
            r.jitter_category,
            split.join(", ")
        );
    }
    out
}

/// A grouped bar chart: one group per figure, one bar per network, with values and TIPHON
/// categories written on the bars. Plain SVG, so it renders anywhere (README included).
pub fn render_svg(rows: &[Row]) -> String {
    let figures: [(&str, &str, fn(&Row) -> (f64, &'static str)); 4] = [
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
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-weight="bold">{name} ({unit})</text>
"#,
            x0 + (group_w - 40.0) / 2.0,
            bottom + 22.0
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let x = 20.0 + i as f64 * 230.0;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>
"#,
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

/// Runs one scenario: pcc over `wans`, every client downloading, c1 pinging a server.
fn scenario(lab: &Lab, name: &str, wans: &[&str], args: &ReportArgs) -> Result<Row> {
    let wan_arg = wans.join(",");
    let pcc = lab.start_pcc(&["--wan", &wan_arg])?;
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
    pcc.stop()?;
    let per_wan: Vec<(String, f64)> = wans
        .iter()
        .map(|w| {
            let bytes =
                after.wan("pcc_wan_rx_bytes_total", w) - before.wan("pcc_wan_rx_bytes_total", w);
            (w.to_string(), bytes * 8.0 / elapsed / 1e6)
        })
        .collect();
    Ok(Row::new(
        name,
        wans,
        f64::from(args.rate) * wans.len() as f64,
        per_wan,
        &rtts,
    ))
}

pub fn run(args: ReportArgs) -> Result<()> {
    ensure!(
        (5..=300).contains(&args.seconds),
        "--seconds must be 5..=300"
    );
    crate::prepare(args.no_build)?;
    let lab = Lab::builder()
        .clients(3)
        .servers(12)
        .shaped(Some(args.rate))
        .build()
        .context("building the lab")?;
    lab.start_http()?;
    let mut rows = Vec::new();
    for (name, wans) in [
        (format!("{} alone", WAN_NAMES[0]), vec![WAN_NAMES[0]]),
        (format!("{} alone", WAN_NAMES[1]), vec![WAN_NAMES[1]]),
        ("pcc balanced".to_string(), vec![WAN_NAMES[0], WAN_NAMES[1]]),
    ] {
        eprintln!("xtask report: {name}: {} s of load", args.seconds);
        rows.push(scenario(&lab, &name, &wans, &args)?);
    }
    drop(lab);
    let out = if args.out.is_absolute() {
        args.out.clone()
    } else {
        crate::root().join(&args.out)
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let text = render_text(&rows, args.rate);
    std::fs::write(out.join("report.txt"), &text)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&rows)? + "\n",
    )?;
    std::fs::write(out.join("report.svg"), render_svg(&rows))?;
    print!("{text}");
    eprintln!(
        "xtask report: written to {}/report.{{txt,json,svg}}",
        out.display()
    );
    Ok(())
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
        run(ReportArgs {
            seconds: 5,
            rate: 20,
            streams: 1,
            out: out.clone(),
            no_build: true,
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
}
