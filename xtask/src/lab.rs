//! `cargo xtask lab`: a shaped lab with pcc-ctl and bounded traffic from every client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use pcc_tests::{Lab, LabProcess, Metrics, WAN_NAMES, wan_of_addr};

/// Parallel downloads per client.
const STREAMS_PER_CLIENT: usize = 4;
/// Size of the file the clients download (large enough to last the whole run when shaped).
const FILE_SIZE: u64 = 32 << 20;

#[derive(Args)]
pub struct LabArgs {
    /// Number of LAN clients (1..=50).
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// How long to drive traffic (1..=600 s).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Don't shape the ISP lines (default: tbf 20 Mbit/s per line and direction).
    #[arg(long)]
    no_shape: bool,
    /// Skip xtask/setup.sh and the pcc-ctl build (use the binary that is there or $PCC_CTL).
    #[arg(long)]
    no_build: bool,
    /// Further options for `pcc-ctl up`, e.g. `--weight wan0=2,wan1=1 --classifier src-address`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PCC-CTL OPTIONS"
    )]
    pcc_args: Vec<String>,
}

pub fn run(args: LabArgs) -> Result<()> {
    let LabArgs {
        clients,
        seconds,
        no_shape,
        no_build,
        pcc_args,
    } = args;
    ensure!((1..=50).contains(&clients), "--clients must be 1..=50");
    ensure!((1..=600).contains(&seconds), "--seconds must be 1..=600");
    ensure!(
        pcc_tests::is_root(),
        "the lab needs root (it creates network namespaces)"
    );

    // Ctrl-C: stop the traffic, then everything below is dropped (pcc-ctl gets SIGTERM, the
    // namespaces are deleted). The lab's processes run in their own process groups, so the
    // terminal's SIGINT only reaches us.
    let stop = Arc::new(AtomicBool::new(false));
    let presses = Arc::new(AtomicU32::new(0));
    {
        let (stop, presses) = (stop.clone(), presses.clone());
        ctrlc::set_handler(move || {
            stop.store(true, Ordering::SeqCst);
            if presses.fetch_add(1, Ordering::SeqCst) == 0 {
                eprintln!("\nxtask lab: interrupted, cleaning up…");
            } else {
                eprintln!("xtask lab: still cleaning up (namespaces are being deleted)…");
            }
        })
        .context("installing the Ctrl-C handler")?;
    }

    let mut builder = Lab::builder();
    if !no_build {
        crate::setup()?;
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        let bin = crate::build_pcc_ctl()?;
        if std::env::var_os("PCC_CTL").is_none() {
            builder = builder.pcc_ctl(bin);
        }
    }
    if stop.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    let shaped = (!no_shape).then_some(20);
    let lab = builder
        .clients(clients)
        .servers(50)
        .shaped(shaped)
        .build()?;
    eprintln!(
        "xtask lab: namespaces {}-*, {} clients, {}",
        lab.prefix(),
        clients,
        match shaped {
            Some(m) => format!("ISP lines shaped to {m} Mbit/s each way"),
            None => "unshaped".into(),
        }
    );
    lab.start_http()?;
    let file = lab.http_file(FILE_SIZE)?;
    let pcc_refs: Vec<&str> = pcc_args.iter().map(String::as_str).collect();
    let pcc = lab.start_pcc(&pcc_refs)?;
    eprintln!("xtask lab: pcc-ctl ready, driving traffic for {seconds} s (Ctrl-C stops)");
    let before = pcc.metrics()?;

    let report = drive(&lab, &file, Duration::from_secs(seconds), &stop)?;
    let after = pcc.metrics()?;
    let log = lab.http_log()?;
    print_report(&lab, &pcc_args, &report, &before, &after, &log);

    let exit = pcc.stop()?;
    ensure!(
        exit.code() == Some(0),
        "pcc-ctl did not exit cleanly: {}",
        exit.describe()
    );
    drop(lab);
    eprintln!("xtask lab: cleaned up");
    Ok(())
}

struct Report {
    elapsed: Duration,
    transfers: usize,
    failed: usize,
    cut: usize,
    bytes: u64,
    pings_sent: u32,
    pings_received: u32,
}

/// Every client keeps `STREAMS_PER_CLIENT` curl downloads running (each to the next server
/// address) and one ping, until `duration` has passed or `stop` is set.
fn drive(
    lab: &Lab,
    file: &pcc_tests::TestFile,
    duration: Duration,
    stop: &AtomicBool,
) -> Result<Report> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut next_server = 0usize;
    let mut running: VecDeque<(String, LabProcess)> = VecDeque::new();
    let mut report = Report {
        elapsed: Duration::ZERO,
        transfers: 0,
        failed: 0,
        cut: 0,
        bytes: 0,
        pings_sent: 0,
        pings_received: 0,
    };
    let secs = duration.as_secs().to_string();
    let count = (duration.as_secs() * 2).to_string();
    let mut pings = Vec::new();
    for (i, c) in lab.client_names().iter().enumerate() {
        let dst = lab.server_addr(i % lab.server_count()).to_string();
        let args = [
            "ping", "-n", "-q", "-i", "0.5", "-c", &count, "-w", &secs, &dst,
        ];
        pings.push(lab.spawn(c, &args)?);
    }
    let mut start_curl =
        |client: &str, running: &mut VecDeque<(String, LabProcess)>| -> Result<()> {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .as_secs()
                .max(1);
            let server = lab.server_addr(next_server % lab.server_count());
            next_server += 1;
            let (url, mt) = (lab.url(server, file), left.to_string());
            let args = [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--connect-timeout",
                "5",
                "--max-time",
                &mt,
                "-w",
                "%{size_download}",
                &url,
            ];
            running.push_back((client.to_owned(), lab.spawn(client, &args)?));
            Ok(())
        };
    for c in lab.client_names() {
        for _ in 0..STREAMS_PER_CLIENT {
            start_curl(&c, &mut running)?;
        }
    }
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let mut still = VecDeque::new();
        while let Some((client, mut p)) = running.pop_front() {
            match p.try_wait() {
                None => still.push_back((client, p)),
                Some(st) => {
                    collect(&mut report, st.code(), &p.stdout_text());
                    if Instant::now() + Duration::from_secs(1) < deadline {
                        start_curl(&client, &mut still)?;
                    }
                }
            }
        }
        running = still;
    }
    // curl's --max-time ends the rest about now; give them a moment, then stop them.
    let grace = if stop.load(Ordering::SeqCst) { 0 } else { 3 };
    for (_, p) in running {
        let out = p.finish(Duration::from_secs(grace));
        collect(
            &mut report,
            out.status.code(),
            &String::from_utf8_lossy(&out.stdout),
        );
    }
    for mut p in pings {
        if grace == 0 {
            // ping prints its summary on SIGINT.
            p.signal(libc::SIGINT);
        }
        let out = p.finish(Duration::from_secs(grace.max(1)));
        let text = String::from_utf8_lossy(&out.stdout);
        if let Some(l) = text.lines().find(|l| l.contains("packets transmitted")) {
            let nums: Vec<u32> = l
                .split(',')
                .filter_map(|s| s.split_whitespace().next()?.parse().ok())
                .collect();
            if nums.len() >= 2 {
                report.pings_sent += nums[0];
                report.pings_received += nums[1];
            }
        }
    }
    report.elapsed = start.elapsed().min(duration.max(Duration::from_millis(1)));
    Ok(report)
}

fn collect(report: &mut Report, code: Option<i32>, stdout: &str) {
    report.transfers += 1;
    match code {
        // 0 = complete, 28 = ended by --max-time (expected at the end of the run).
        Some(0 | 28) => {}
        // Killed on Ctrl-C.
        None => report.cut += 1,
        Some(_) => report.failed += 1,
    }
    report.bytes += stdout.trim().parse::<u64>().unwrap_or(0);
}

fn print_report(
    lab: &Lab,
    pcc_args: &[String],
    r: &Report,
    before: &Metrics,
    after: &Metrics,
    log: &[pcc_tests::HttpLogEntry],
) {
    let secs = r.elapsed.as_secs_f64().max(0.001);
    let delta = |name: &str, wan: &str| after.wan(name, wan) - before.wan(name, wan);
    let flows: Vec<f64> = WAN_NAMES
        .iter()
        .map(|w| delta("pcc_flows_created_total", w))
        .collect();
    let flows_total: f64 = flows.iter().sum();
    let mut conns = [0usize; 2];
    for e in log {
        if let Some(i) = wan_of_addr(e.client) {
            conns[i] += 1;
        }
    }
    let conns_total = (conns[0] + conns[1]).max(1);
    println!();
    println!(
        "pcc lab: {} clients x {} downloads, {:.1} s, {}, pcc-ctl options: {}",
        lab.client_count(),
        STREAMS_PER_CLIENT,
        secs,
        match lab.shaping() {
            Some(m) => format!("{m} Mbit/s per line"),
            None => "unshaped".into(),
        },
        if pcc_args.is_empty() {
            "(defaults)".into()
        } else {
            pcc_args.join(" ")
        }
    );
    println!(
        "{:<6} {:>7} {:>7} {:>9} {:>7} {:>9} {:>10} {:>10} {:>10}",
        "wan", "flows", "share", "conns*", "share", "tx pkts", "tx MB", "rx MB", "rx Mbit/s"
    );
    let mut tot = (0.0, 0.0, 0.0);
    for (i, w) in WAN_NAMES.iter().enumerate() {
        let txp = delta("pcc_wan_tx_packets_total", w);
        let txb = delta("pcc_wan_tx_bytes_total", w);
        let rxb = delta("pcc_wan_rx_bytes_total", w);
        tot = (tot.0 + txp, tot.1 + txb, tot.2 + rxb);
        println!(
            "{:<6} {:>7} {:>6.1}% {:>9} {:>6.1}% {:>9} {:>10.2} {:>10.2} {:>10.2}",
            w,
            flows[i],
            100.0 * flows[i] / flows_total.max(1.0),
            conns[i],
            100.0 * conns[i] as f64 / conns_total as f64,
            txp,
            txb / 1e6,
            rxb / 1e6,
            rxb * 8.0 / secs / 1e6
        );
    }
    println!(
        "{:<6} {:>7} {:>7} {:>9} {:>7} {:>9} {:>10.2} {:>10.2} {:>10.2}",
        "total",
        flows_total,
        "",
        conns[0] + conns[1],
        "",
        tot.0,
        tot.1 / 1e6,
        tot.2 / 1e6,
        tot.2 * 8.0 / secs / 1e6
    );
    println!("* conns: HTTP connections as the servers saw them (by WAN source address)");
    println!(
        "downloads: {} transfers ({} failed, {} cut off), {:.1} MB received by the clients = {:.2} Mbit/s aggregate",
        r.transfers,
        r.failed,
        r.cut,
        r.bytes as f64 / 1e6,
        r.bytes as f64 * 8.0 / secs / 1e6
    );
    println!(
        "ping: {}/{} replies; active flows now: {}",
        r.pings_received,
        r.pings_sent,
        after.get("pcc_flows_active", &[]).unwrap_or(0.0)
    );
}
