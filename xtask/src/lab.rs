//! `cargo xtask lab`: a shaped lab with pcc-ctl and bounded traffic from every client, a
//! status line per second, ISP faults on a schedule (`--cut isp0@5 --restore isp0@12`) or typed
//! while it runs (`cut 0`, `restore 0`, …), and a per-WAN table at the end.

use std::{
    collections::VecDeque,
    io::{BufRead as _, IsTerminal as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use clap::Args;
use pcc_tests::{Lab, LabProcess, Metrics, PccHandle, WAN_NAMES, wan_of_addr};

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
    /// Kill an ISP's internet at S seconds after traffic starts: nftables in the ISP drops all
    /// IPv4 from the router, link and ARP stay up (e.g. `isp0@5`; repeatable).
    #[arg(long, value_parser = parse_at, value_name = "ISP@S")]
    cut: Vec<(usize, f64)>,
    /// Undo `--cut` (and `--loss`) at S seconds (e.g. `isp0@12`; repeatable).
    #[arg(long, value_parser = parse_at, value_name = "ISP@S")]
    restore: Vec<(usize, f64)>,
    /// Take the ISP's side of the link down at S seconds (the router's WAN loses carrier).
    #[arg(long, value_parser = parse_at, value_name = "ISP@S")]
    down: Vec<(usize, f64)>,
    /// Bring the ISP's side of the link up again at S seconds.
    #[arg(long, value_parser = parse_at, value_name = "ISP@S")]
    up: Vec<(usize, f64)>,
    /// Random loss of P percent in the ISP (both directions) from S seconds, e.g. `isp0=20@3`.
    #[arg(long, value_parser = parse_loss_at, value_name = "ISP=P@S")]
    loss: Vec<(usize, u32, f64)>,
    /// No status line per second.
    #[arg(long)]
    quiet: bool,
    /// Further options for `pcc-ctl up`, e.g. `--weight wan0=2,wan1=1 --classifier src-address`.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PCC-CTL OPTIONS"
    )]
    pcc_args: Vec<String>,
}

/// An ISP fault, scheduled or typed.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Action {
    Cut(usize),
    Restore(usize),
    Down(usize),
    Up(usize),
    Loss(usize, u32),
    Quit,
}

impl Action {
    fn apply(self, lab: &Lab) -> Result<String> {
        Ok(match self {
            Action::Cut(i) => {
                lab.cut_isp(i)?;
                format!("cut isp{i}: it drops all IPv4 from the router (link and ARP stay up)")
            }
            Action::Restore(i) => {
                lab.restore_isp(i)?;
                lab.lossy_isp(i, 0)?;
                format!("restore isp{i}: no more drops")
            }
            Action::Down(i) => {
                lab.carrier_down(i)?;
                format!("down isp{i}: its up0 is down, wan{i} has no carrier")
            }
            Action::Up(i) => {
                lab.carrier_up(i)?;
                format!("up isp{i}: carrier back on wan{i}")
            }
            Action::Loss(i, p) => {
                lab.lossy_isp(i, p)?;
                format!("loss isp{i}: {p}% random loss each way")
            }
            Action::Quit => "quit".into(),
        })
    }
}

fn parse_isp(s: &str) -> Result<usize, String> {
    let n = s.strip_prefix("isp").unwrap_or(s);
    match n.parse::<usize>() {
        Ok(i) if i < 2 => Ok(i),
        _ => Err(format!("expected isp0, isp1, 0 or 1, got `{s}`")),
    }
}

fn parse_secs(s: &str) -> Result<f64, String> {
    s.trim_end_matches('s')
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("expected seconds, got `{s}`"))
}

fn parse_at(s: &str) -> Result<(usize, f64), String> {
    let (isp, at) = s
        .split_once('@')
        .ok_or_else(|| format!("expected ISP@SECONDS, e.g. isp0@5, got `{s}`"))?;
    Ok((parse_isp(isp)?, parse_secs(at)?))
}

fn parse_loss_at(s: &str) -> Result<(usize, u32, f64), String> {
    let (what, at) = s
        .split_once('@')
        .ok_or_else(|| format!("expected ISP=PERCENT@SECONDS, e.g. isp0=20@3, got `{s}`"))?;
    let (isp, p) = what
        .split_once('=')
        .ok_or_else(|| format!("expected ISP=PERCENT@SECONDS, got `{s}`"))?;
    let p: u32 = p
        .trim_end_matches('%')
        .parse()
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| format!("loss must be 0..=100 percent, got `{p}`"))?;
    Ok((parse_isp(isp)?, p, parse_secs(at)?))
}

/// A command typed while the lab runs: `cut 0`, `restore 0`, `down 1`, `up 1`, `loss 0 20`,
/// `quit`.
fn parse_command(line: &str) -> Result<Action, String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let isp = |k: usize| {
        w.get(k)
            .map_or(Err("which ISP? (0 or 1)".to_string()), |s| parse_isp(s))
    };
    match w.first().copied() {
        Some("cut") => Ok(Action::Cut(isp(1)?)),
        Some("restore") => Ok(Action::Restore(isp(1)?)),
        Some("down") => Ok(Action::Down(isp(1)?)),
        Some("up") => Ok(Action::Up(isp(1)?)),
        Some("loss") => {
            let p = w
                .get(2)
                .and_then(|p| p.trim_end_matches('%').parse().ok())
                .filter(|p| *p <= 100)
                .ok_or("loss ISP PERCENT, e.g. `loss 0 20`")?;
            Ok(Action::Loss(isp(1)?, p))
        }
        Some("quit" | "q" | "exit") => Ok(Action::Quit),
        _ => Err(
            "commands: cut N | restore N | down N | up N | loss N PERCENT | quit (N = ISP 0 or 1)"
                .into(),
        ),
    }
}

impl LabArgs {
    /// The scheduled faults in time order, checked against `--clients` and `--seconds`.
    fn schedule(&self) -> Result<Vec<(f64, Action)>> {
        let seconds = self.seconds;
        ensure!((1..=50).contains(&self.clients), "--clients must be 1..=50");
        ensure!((1..=600).contains(&seconds), "--seconds must be 1..=600");
        let mut schedule: Vec<(f64, Action)> = Vec::new();
        schedule.extend(self.cut.iter().map(|&(i, t)| (t, Action::Cut(i))));
        schedule.extend(self.restore.iter().map(|&(i, t)| (t, Action::Restore(i))));
        schedule.extend(self.down.iter().map(|&(i, t)| (t, Action::Down(i))));
        schedule.extend(self.up.iter().map(|&(i, t)| (t, Action::Up(i))));
        schedule.extend(self.loss.iter().map(|&(i, p, t)| (t, Action::Loss(i, p))));
        schedule.sort_by(|a, b| a.0.total_cmp(&b.0));
        if let Some((t, a)) = schedule.iter().find(|(t, _)| *t >= seconds as f64) {
            bail!("{a:?} at {t} s is not within the {seconds} s of traffic (--seconds)");
        }
        Ok(schedule)
    }
}

/// Whether Ctrl-C was pressed: each step of the start-up asks, so an interrupted lab starts
/// nothing more and cleans up what it has.
fn interrupted(stop: &AtomicBool) -> bool {
    stop.load(Ordering::SeqCst)
}

/// The end of every run that got as far as a lab: pcc-ctl (if started) must exit cleanly on
/// SIGTERM, then the namespaces go.
fn finish(lab: Lab, pcc: Option<PccHandle>) -> Result<()> {
    if let Some(pcc) = pcc {
        pcc.stop_cleanly()?;
    }
    drop(lab);
    eprintln!("xtask lab: cleaned up");
    Ok(())
}

pub fn run(args: LabArgs) -> Result<()> {
    let schedule = args.schedule()?;
    let LabArgs {
        clients,
        seconds,
        no_shape,
        no_build,
        quiet,
        pcc_args,
        ..
    } = args;
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
        if interrupted(&stop) {
            eprintln!("xtask lab: cleaned up (nothing was started)");
            return Ok(());
        }
        let bin = crate::build_pcc_ctl()?;
        if std::env::var_os("PCC_CTL").is_none() {
            builder = builder.pcc_ctl(bin);
        }
    }
    if interrupted(&stop) {
        eprintln!("xtask lab: cleaned up (nothing was started)");
        return Ok(());
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
    if interrupted(&stop) {
        return finish(lab, None);
    }
    let pcc_refs: Vec<&str> = pcc_args.iter().map(String::as_str).collect();
    let pcc = lab.start_pcc(&pcc_refs)?;
    if interrupted(&stop) {
        return finish(lab, Some(pcc));
    }
    let interactive = std::io::stdin().is_terminal();
    eprintln!(
        "xtask lab: pcc-ctl ready, driving traffic for {seconds} s (Ctrl-C stops){}",
        if interactive {
            "; type cut N | restore N | down N | up N | loss N PERCENT | quit"
        } else {
            ""
        }
    );
    let commands = interactive.then(read_commands);
    let before = pcc.metrics()?;

    let control = Control {
        pcc: &pcc,
        schedule,
        commands,
        status: !quiet,
    };
    let report = drive(&lab, &file, Duration::from_secs(seconds), &stop, control)?;
    let after = pcc.metrics()?;
    let log = lab.http_log()?;
    print_report(&lab, &pcc_args, &report, &before, &after, &log);
    finish(lab, Some(pcc))
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
/// Typed commands, one per line, from a thread reading stdin (it ends with the process).
fn read_commands() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// What `drive` does besides traffic: the fault schedule, typed commands, the status line.
struct Control<'a> {
    pcc: &'a PccHandle,
    schedule: Vec<(f64, Action)>,
    commands: Option<mpsc::Receiver<String>>,
    status: bool,
}

/// Prints one status line per second from pcc-ctl's metrics.
struct Status {
    last: Option<(Instant, Metrics)>,
}

impl Status {
    fn line(&mut self, t: f64, m: Metrics) -> String {
        let now = Instant::now();
        let mut parts = Vec::new();
        for w in WAN_NAMES {
            let mbit = match &self.last {
                Some((at, prev)) => {
                    let dt = now.duration_since(*at).as_secs_f64().max(0.001);
                    let d =
                        m.wan("pcc_wan_rx_bytes_total", w) - prev.wan("pcc_wan_rx_bytes_total", w);
                    format!("{:6.1}", d.max(0.0) * 8.0 / dt / 1e6)
                }
                None => "     -".into(),
            };
            let state = match m.get("pcc_wan_up", &[("wan", w)]) {
                Some(v) if v >= 1.0 => "up  ",
                Some(_) => "DOWN",
                None => "?   ",
            };
            let rtt = m
                .get("pcc_wan_rtt_seconds", &[("wan", w)])
                .map_or("    -".into(), |r| format!("{:5.1}", r * 1e3));
            let loss = m
                .get("pcc_wan_loss_ratio", &[("wan", w)])
                .map_or("  -".into(), |l| format!("{:3.0}", l * 100.0));
            parts.push(format!(
                "{w} {state} rx {mbit} Mbit/s rtt {rtt} ms loss {loss}%"
            ));
        }
        let drops = m
            .get("pcc_drops_total", &[("reason", "no_wan_up")])
            .unwrap_or(0.0);
        let line = format!(
            "t={t:5.1}s  {}  | flows {} no_wan_up drops {}",
            parts.join("  | "),
            m.get("pcc_flows_active", &[]).unwrap_or(0.0),
            drops
        );
        self.last = Some((now, m));
        line
    }
}

fn drive(
    lab: &Lab,
    file: &pcc_tests::TestFile,
    duration: Duration,
    stop: &AtomicBool,
    mut control: Control<'_>,
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
    let mut status = Status { last: None };
    let mut next_status = start;
    let mut schedule: VecDeque<(f64, Action)> = control.schedule.drain(..).collect();
    while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let t = start.elapsed().as_secs_f64();
        let mut due = Vec::new();
        while schedule.front().is_some_and(|(at, _)| *at <= t) {
            due.extend(schedule.pop_front().map(|(_, a)| a));
        }
        if let Some(rx) = &control.commands {
            while let Ok(line) = rx.try_recv() {
                if line.trim().is_empty() {
                    continue;
                }
                match parse_command(&line) {
                    Ok(a) => due.push(a),
                    Err(e) => eprintln!("xtask lab: {e}"),
                }
            }
        }
        for a in due {
            if a == Action::Quit {
                eprintln!("xtask lab: t={t:5.1}s: quit");
                stop.store(true, Ordering::SeqCst);
                break;
            }
            match a.apply(lab) {
                Ok(what) => eprintln!("xtask lab: t={t:5.1}s: {what}"),
                Err(e) => eprintln!("xtask lab: t={t:5.1}s: {a:?} failed: {e:#}"),
            }
        }
        if control.status && Instant::now() >= next_status {
            next_status += Duration::from_secs(1);
            match control.pcc.metrics() {
                Ok(m) => println!("{}", status.line(t, m)),
                Err(e) => eprintln!("xtask lab: t={t:5.1}s: metrics: {e:#}"),
            }
        }
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
    if after.has("pcc_wan_state_changes_total") {
        let health: Vec<String> = WAN_NAMES
            .iter()
            .map(|w| {
                format!(
                    "{w} {} ({} changes, rtt {:.1} ms, jitter {:.1} ms, loss {:.0}%)",
                    if after.wan("pcc_wan_up", w) >= 1.0 {
                        "up"
                    } else {
                        "DOWN"
                    },
                    delta("pcc_wan_state_changes_total", w),
                    after.wan("pcc_wan_rtt_seconds", w) * 1e3,
                    after.wan("pcc_wan_jitter_seconds", w) * 1e3,
                    after.wan("pcc_wan_loss_ratio", w) * 100.0
                )
            })
            .collect();
        println!(
            "health: {}; no_wan_up drops: {}",
            health.join(", "),
            delta_of(after, before, "pcc_drops_total", "reason", "no_wan_up")
        );
    }
}

fn delta_of(after: &Metrics, before: &Metrics, name: &str, label: &str, value: &str) -> f64 {
    let get = |m: &Metrics| m.get(name, &[(label, value)]).unwrap_or(0.0);
    get(after) - get(before)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `cargo xtask lab ARGS…` as clap parses it.
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        lab: LabArgs,
    }

    fn lab_args(args: &[&str]) -> Result<LabArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).map(|c| c.lab)
    }

    #[test]
    fn isps_and_seconds() {
        assert_eq!(parse_isp("isp0"), Ok(0));
        assert_eq!(parse_isp("1"), Ok(1));
        for bad in ["isp2", "2", "isp", "", "ISP0", "isp-1", "wan0"] {
            let e = parse_isp(bad).unwrap_err();
            assert!(e.contains("expected isp0, isp1, 0 or 1"), "{bad:?}: {e}");
        }
        assert_eq!(parse_secs("5"), Ok(5.0));
        assert_eq!(parse_secs("2.5s"), Ok(2.5));
        assert_eq!(parse_secs("0"), Ok(0.0));
        for bad in ["-1", "inf", "NaN", "", "s", "five", "1e400"] {
            let e = parse_secs(bad).unwrap_err();
            assert!(e.contains("expected seconds"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn scheduled_faults() {
        assert_eq!(parse_at("isp0@5"), Ok((0, 5.0)));
        assert_eq!(parse_at("1@0.5s"), Ok((1, 0.5)));
        let e = parse_at("isp0").unwrap_err();
        assert!(e.contains("ISP@SECONDS"), "{e}");
        assert!(parse_at("isp2@5").unwrap_err().contains("isp2"));
        assert!(parse_at("isp0@-3").unwrap_err().contains("-3"));
        assert!(parse_at("@5").is_err());

        assert_eq!(parse_loss_at("isp0=20@3"), Ok((0, 20, 3.0)));
        assert_eq!(parse_loss_at("1=100%@0"), Ok((1, 100, 0.0)));
        assert_eq!(parse_loss_at("isp1=0@2"), Ok((1, 0, 2.0)));
        let e = parse_loss_at("isp0=101@3").unwrap_err();
        assert!(e.contains("0..=100"), "{e}");
        assert!(parse_loss_at("isp0=-1@3").unwrap_err().contains("0..=100"));
        assert!(parse_loss_at("isp0=x@3").is_err());
        assert!(
            parse_loss_at("isp0@3")
                .unwrap_err()
                .contains("ISP=PERCENT@SECONDS")
        );
        assert!(
            parse_loss_at("isp0=20")
                .unwrap_err()
                .contains("ISP=PERCENT@SECONDS")
        );
        assert!(parse_loss_at("isp5=20@3").unwrap_err().contains("isp5"));
        assert!(
            parse_loss_at("isp0=20@later")
                .unwrap_err()
                .contains("later")
        );
    }

    #[test]
    fn typed_commands() {
        assert_eq!(parse_command("cut 0"), Ok(Action::Cut(0)));
        assert_eq!(parse_command("restore isp1"), Ok(Action::Restore(1)));
        assert_eq!(parse_command("  down \t 1  "), Ok(Action::Down(1)));
        assert_eq!(parse_command("up 0"), Ok(Action::Up(0)));
        assert_eq!(parse_command("loss 0 20"), Ok(Action::Loss(0, 20)));
        assert_eq!(parse_command("loss isp1 5%"), Ok(Action::Loss(1, 5)));
        assert_eq!(parse_command("loss 1 0"), Ok(Action::Loss(1, 0)));
        for q in ["quit", "q", "exit", "quit now"] {
            assert_eq!(parse_command(q), Ok(Action::Quit), "{q:?}");
        }
        for which in ["cut", "restore", "down", "up"] {
            assert!(
                parse_command(which).unwrap_err().contains("which ISP?"),
                "{which}"
            );
        }
        assert!(parse_command("cut 2").unwrap_err().contains("isp0, isp1"));
        for bad in ["loss 0", "loss 0 101", "loss 0 -5", "loss 0 lots"] {
            let e = parse_command(bad).unwrap_err();
            assert!(e.contains("loss ISP PERCENT"), "{bad:?}: {e}");
        }
        assert!(
            parse_command("loss 3 20")
                .unwrap_err()
                .contains("isp0, isp1")
        );
        for bad in ["", "   ", "CUT 0", "kill 0", "help"] {
            let e = parse_command(bad).unwrap_err();
            assert!(e.starts_with("commands: cut N"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn command_line_schedule_and_passthrough() {
        let a = lab_args(&[
            "--seconds",
            "8",
            "--restore",
            "isp0@5",
            "--cut",
            "isp0@2",
            "--loss",
            "isp1=20@1",
            "--down",
            "1@6",
            "--up",
            "isp1@7.5",
            "--weight",
            "wan0=2,wan1=1",
            "--classifier",
            "src-address",
        ])
        .unwrap();
        assert_eq!(
            a.schedule().unwrap(),
            [
                (1.0, Action::Loss(1, 20)),
                (2.0, Action::Cut(0)),
                (5.0, Action::Restore(0)),
                (6.0, Action::Down(1)),
                (7.5, Action::Up(1)),
            ]
        );
        assert_eq!(
            a.pcc_args,
            ["--weight", "wan0=2,wan1=1", "--classifier", "src-address"]
        );
        assert_eq!(
            (a.clients, a.no_shape, a.no_build, a.quiet),
            (3, false, false, false)
        );

        // Repeated faults at the same time keep their kind's order (stable sort).
        let a = lab_args(&["--cut", "isp1@3", "--cut", "isp0@3", "--restore", "isp1@3"]).unwrap();
        assert_eq!(
            a.schedule().unwrap(),
            [
                (3.0, Action::Cut(1)),
                (3.0, Action::Cut(0)),
                (3.0, Action::Restore(1)),
            ]
        );
        assert!(lab_args(&[]).unwrap().schedule().unwrap().is_empty());

        let late = lab_args(&["--seconds", "8", "--cut", "isp0@8"]).unwrap();
        let e = late.schedule().unwrap_err().to_string();
        assert!(
            e.contains("Cut(0) at 8 s") && e.contains("--seconds"),
            "{e}"
        );
        for (args, what) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--clients", "51"][..], "--clients"),
            (&["--seconds", "0"][..], "--seconds"),
            (&["--seconds", "601"][..], "--seconds"),
        ] {
            let e = lab_args(args).unwrap().schedule().unwrap_err().to_string();
            assert!(e.contains(what), "{args:?}: {e}");
        }
        for bad in [
            &["--cut", "isp2@1"][..],
            &["--restore", "isp0"][..],
            &["--loss", "isp0=20"][..],
            &["--loss", "isp0=120@1"][..],
            &["--down", "isp0@soon"][..],
        ] {
            assert!(lab_args(bad).is_err(), "{bad:?} accepted");
        }
    }
}
