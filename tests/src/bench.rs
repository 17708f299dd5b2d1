//! `cargo xtask bench failover`: how long traffic pinned to a WAN stops when its ISP dies, and
//! how fast pcc-ctl notices the failure and the recovery. Lives here (not in xtask) so the test
//! suite can run a smoke version of exactly the same code (`tests/tests/bench_smoke.rs`).
//!
//! One lab (unshaped unless asked), one pcc-ctl (defaults plus any extra options), then per run:
//! fresh UDP flows from the clients, each sending a request to the echo server every 50 ms;
//! the fault on isp0; pcc_wan_up{wan="wan0"} polled every 20 ms; once the flows that were on
//! wan0 answer over wan1, the fault is removed and the recovery timed. The failover time of a
//! run is the longest reply gap of any flow that was on wan0 when the fault began.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    health::{self, FlowsReport, UdpFlows, median, mono_now, wait_wan_state},
    lab::{Lab, WAN_NAMES},
    pcc::PccHandle,
};

/// Request interval of every flow.
pub const FLOW_INTERVAL: Duration = Duration::from_millis(50);
/// Flows per run.
pub const FLOWS: usize = 8;
/// Clients the flows come from.
const CLIENTS: usize = 4;
/// The longest any wait in a run may take before the run is recorded as failed.
const DETECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How the ISP fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// nftables in isp0 drops every IPv4 packet from the router; ARP is still answered and
    /// the link stays up ("modem alive, internet dead").
    InternetDead,
    /// `ip link set up0 down` in isp0: the router's wan0 loses carrier.
    Carrier,
}

impl Fault {
    pub fn label(self) -> &'static str {
        match self {
            Fault::InternetDead => "internet dead",
            Fault::Carrier => "carrier loss",
        }
    }

    fn apply(self, lab: &Lab) -> Result<()> {
        match self {
            Fault::InternetDead => lab.cut_isp(0),
            Fault::Carrier => lab.carrier_down(0),
        }
    }

    fn undo(self, lab: &Lab) -> Result<()> {
        match self {
            Fault::InternetDead => lab.restore_isp(0),
            Fault::Carrier => lab.carrier_up(0),
        }
    }
}

/// Options of [`failover`].
#[derive(Clone, Debug)]
pub struct FailoverOpts {
    /// Runs with [`Fault::InternetDead`].
    pub runs: usize,
    /// Runs with [`Fault::Carrier`] (after the others).
    pub carrier_runs: usize,
    /// `Some(mbit)`: shape the ISP lines with tbf (default: unshaped).
    pub shaped: Option<u32>,
    /// pcc-ctl binary (default: [`crate::pcc_ctl_path`]).
    pub pcc_ctl: Option<PathBuf>,
    /// Extra `pcc-ctl up` options (default none: pcc-ctl's defaults).
    pub pcc_args: Vec<String>,
    /// Progress lines on stderr.
    pub verbose: bool,
}

impl Default for FailoverOpts {
    fn default() -> Self {
        Self {
            runs: 5,
            carrier_runs: 1,
            shaped: None,
            pcc_ctl: None,
            pcc_args: Vec::new(),
            verbose: true,
        }
    }
}

/// One run's measurements (seconds). `None`: did not happen within the run's time limits.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub fault: Fault,
    /// Flows of the run, and how many of them were on wan0 when the fault began.
    pub flows: usize,
    pub on_wan0: usize,
    /// Of those, how many answered over wan1 afterwards.
    pub moved: usize,
    /// Longest reply gap of the flows that were on wan0 (the failover time).
    pub failover: Option<f64>,
    /// Longest reply gap of the flows on wan1 (should stay near the request interval).
    pub wan1_gap: Option<f64>,
    /// Fault → first scrape showing `pcc_wan_up{wan="wan0"} 0`.
    pub down: Option<f64>,
    /// Fault removed → first scrape showing `pcc_wan_up{wan="wan0"} 1`.
    pub up: Option<f64>,
    /// What went wrong, if anything.
    pub note: Option<String>,
}

/// Everything [`failover`] measured.
#[derive(Clone, Debug)]
pub struct FailoverReport {
    pub runs: Vec<RunResult>,
    /// Namespace prefix of the lab used (it is gone when [`failover`] returns).
    pub lab_prefix: String,
    pub shaped: Option<u32>,
    pub pcc_args: Vec<String>,
}

fn say(verbose: bool, msg: &str) {
    if verbose {
        eprintln!("bench failover: {msg}");
    }
}

/// Builds the lab, runs the benchmark, removes the lab.
pub fn failover(opts: &FailoverOpts) -> Result<FailoverReport> {
    ensure!(
        (1..=50).contains(&(opts.runs + opts.carrier_runs)),
        "1..=50 runs in all"
    );
    let mut b = Lab::builder()
        .clients(CLIENTS)
        .servers(16)
        .shaped(opts.shaped);
    if let Some(p) = &opts.pcc_ctl {
        b = b.pcc_ctl(p);
    }
    let lab = b.build()?;
    let prefix = lab.prefix().to_owned();
    say(opts.verbose, &format!("lab {prefix}-*"));
    lab.start_udp_echo()?;
    let args: Vec<&str> = opts.pcc_args.iter().map(String::as_str).collect();
    let pcc = lab.start_pcc(&args)?;
    for w in WAN_NAMES {
        wait_wan_state(&pcc, w, true, DETECT_TIMEOUT)
            .with_context(|| format!("{w} up after start"))?;
    }
    let pairs = pick_flows(&lab)?;
    say(
        opts.verbose,
        &format!(
            "flows: {}",
            pairs
                .iter()
                .map(|(c, a)| format!("{c}->{a}"))
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let faults = std::iter::repeat_n(Fault::InternetDead, opts.runs)
        .chain(std::iter::repeat_n(Fault::Carrier, opts.carrier_runs));
    let total = opts.runs + opts.carrier_runs;
    let mut runs = Vec::new();
    for (n, fault) in faults.enumerate() {
        let r = one_run(&lab, &pcc, &pairs, fault)
            .with_context(|| format!("run {} ({})", n + 1, fault.label()))?;
        say(
            opts.verbose,
            &format!(
                "run {}/{total} ({}): {} of {} flows on wan0, {} moved; failover {}, down after {}, up after {}{}",
                n + 1,
                fault.label(),
                r.on_wan0,
                r.flows,
                r.moved,
                secs(r.failover),
                secs(r.down),
                secs(r.up),
                r.note
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            ),
        );
        runs.push(r);
    }
    pcc.stop_cleanly()?;
    drop(lab);
    Ok(FailoverReport {
        runs,
        lab_prefix: prefix,
        shaped: opts.shaped,
        pcc_args: opts.pcc_args.clone(),
    })
}

/// Chooses [`FLOWS`] (client, server) pairs, half of them (as far as the classifier allows) on
/// wan0: short calibration flows show where each candidate pair lands. With an address-based
/// classifier a pair lands on the same WAN again while both WANs are up.
fn pick_flows(lab: &Lab) -> Result<Vec<(String, std::net::Ipv4Addr)>> {
    let candidates = health::flow_pairs(lab, CLIENTS, 4);
    let mut f = lab.start_udp_flows(
        &health::as_refs(&candidates),
        FLOW_INTERVAL,
        Duration::from_secs(10),
    )?;
    let snap = f.wait_replies(2, Duration::from_secs(8))?;
    drop(f);
    let now = mono_now();
    let (mut w0, mut w1) = (Vec::new(), Vec::new());
    for (i, fl) in snap.flows.iter().enumerate() {
        match fl.wan_at(now) {
            Some(0) => w0.push(candidates[i].clone()),
            _ => w1.push(candidates[i].clone()),
        }
    }
    ensure!(
        !w0.is_empty(),
        "none of {} calibration flows went over wan0",
        candidates.len()
    );
    let take0 = w0.len().min(FLOWS / 2).max(FLOWS.saturating_sub(w1.len()));
    let mut pairs: Vec<_> = w0.into_iter().take(take0).collect();
    pairs.extend(w1.into_iter().take(FLOWS - pairs.len()));
    Ok(pairs)
}

fn one_run(
    lab: &Lab,
    pcc: &PccHandle,
    pairs: &[(String, std::net::Ipv4Addr)],
    fault: Fault,
) -> Result<RunResult> {
    let mut flows: UdpFlows = lab.start_udp_flows(
        &health::as_refs(pairs),
        FLOW_INTERVAL,
        Duration::from_secs(60),
    )?;
    flows.wait_replies(5, Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(500));
    let t_fault = mono_now();
    fault.apply(lab)?;
    let result = (|| -> Result<RunResult> {
        let mut note = Vec::new();
        let down = match wait_wan_state(pcc, "wan0", false, DETECT_TIMEOUT) {
            Ok(t) => Some(t - t_fault),
            Err(e) => {
                note.push(format!("wan0 not seen down: {e:#}"));
                None
            }
        };
        let snap = flows.snapshot();
        let on0 = snap.on_wan_at(0, t_fault);
        // Wait until every flow that was on wan0 answered over wan1, then a little longer.
        let moved_all =
            flows.wait_answered_over("flows moved to wan1", &on0, 1, t_fault, DETECT_TIMEOUT);
        if let Err(e) = moved_all {
            note.push(format!("{e:#}"));
        }
        std::thread::sleep(Duration::from_millis(500));
        let t_undo = mono_now();
        fault.undo(lab)?;
        let up = match wait_wan_state(pcc, "wan0", true, DETECT_TIMEOUT) {
            Ok(t) => Some(t - t_undo),
            Err(e) => {
                note.push(format!("wan0 not seen up again: {e:#}"));
                None
            }
        };
        let report: FlowsReport = flows.snapshot();
        let mut r = summarize(&report, fault, t_fault, t_undo);
        r.down = down;
        r.up = up;
        if !note.is_empty() {
            r.note = Some(note.join("; "));
        }
        Ok(r)
    })();
    // Leave isp0 healthy for the next run whatever happened.
    let undo = fault.undo(lab);
    drop(flows);
    let r = result?;
    undo?;
    if r.up.is_none() {
        // Give it one more chance so the next run starts from two live WANs.
        let _ = wait_wan_state(pcc, "wan0", true, DETECT_TIMEOUT);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(r)
}

/// Failover figures of one run from the flows' replies.
pub fn summarize(report: &FlowsReport, fault: Fault, t_fault: f64, t_undo: f64) -> RunResult {
    let on0 = report.on_wan_at(0, t_fault);
    let on1 = report.on_wan_at(1, t_fault);
    let from = t_fault - 0.5;
    let gaps0: Vec<f64> = on0
        .iter()
        .map(|&i| report.flows[i].longest_gap(from, t_undo))
        .collect();
    let gaps1: Vec<f64> = on1
        .iter()
        .map(|&i| report.flows[i].longest_gap(from, t_undo))
        .collect();
    let moved = on0
        .iter()
        .filter(|&&i| {
            report.flows[i]
                .between(t_fault, t_undo)
                .any(|r| r.wan == Some(1))
        })
        .count();
    let max = |v: &[f64]| v.iter().copied().reduce(f64::max);
    RunResult {
        fault,
        flows: report.flows.len(),
        on_wan0: on0.len(),
        moved,
        failover: max(&gaps0),
        wan1_gap: max(&gaps1),
        down: None,
        up: None,
        note: None,
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(s) => format!("{s:.2} s"),
        None => "—".into(),
    }
}

/// The machine a benchmark ran on.
#[derive(Clone, Debug)]
pub struct MachineInfo {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// `git describe`-like commit of the workspace, with `-dirty` when it has changes.
    pub commit: String,
}

fn cmd_out(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(crate::workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The git commit the pcc-ctl binary at `bin` was built from, as far as its location tells:
/// `<repo>/target/<profile>/pcc-ctl` → `git describe` in `<repo>` (with `-dirty` when that
/// tree has changes), else the workspace's commit plus the binary's path.
pub fn pcc_commit(bin: Option<&Path>) -> String {
    let describe = |dir: &Path| {
        Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let root = crate::workspace_root();
    let Some(bin) = bin else {
        return describe(&root).unwrap_or_else(|| "?".into());
    };
    if let Some(repo) = bin.ancestors().nth(3)
        && bin
            .parent()
            .and_then(Path::parent)
            .and_then(Path::file_name)
            == Some("target".as_ref())
        && repo.join(".git").exists()
        && let Some(c) = describe(repo)
    {
        return c;
    }
    format!(
        "{} (binary {})",
        describe(&root).unwrap_or_else(|| "?".into()),
        bin.display()
    )
}

impl MachineInfo {
    /// The machine, and the commit of the pcc-ctl binary `bin` (see [`pcc_commit`]).
    pub fn probe_for(bin: Option<&Path>) -> Self {
        Self {
            commit: pcc_commit(bin),
            ..Self::probe()
        }
    }

    /// `date; N × CPU; kernel K; built from `commit`` for a section's "When and where" line.
    pub fn when_and_where(&self) -> String {
        format!(
            "{}; {} × {}; kernel {}; built from `{}`",
            self.date, self.nproc, self.cpu_model, self.kernel, self.commit
        )
    }

    pub fn probe() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            cpu_model,
            kernel: cmd_out("uname", &["-r"]).unwrap_or_else(|| "?".into()),
            date: cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into()),
            commit: cmd_out("git", &["describe", "--always", "--dirty"])
                .unwrap_or_else(|| "?".into()),
        }
    }
}

/// pcc-ctl's health settings when no flag changes them.
const HEALTH: pcc_common::health::ProbeParams = pcc_common::health::ProbeParams::DEFAULT;

/// The `## Failover` section (title line included) for BENCHMARKS.md.
pub fn render_markdown(r: &FailoverReport, m: &MachineInfo, command: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Failover\n");
    let _ = writeln!(
        s,
        "How long the LAN's traffic over a WAN stops when that WAN's ISP fails, and how fast \
         pcc-ctl notices the failure and the recovery."
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(
        s,
        "- When and where: {}; {} × {}; kernel {}; pcc-ctl built from `{}`",
        m.date, m.nproc, m.cpu_model, m.kernel, m.commit
    );
    let _ = writeln!(
        s,
        "- Lab: the namespace lab of `tests/` ({}), {CLIENTS} clients, 2 ISPs; `pcc-ctl up --wan wan0,wan1 --lan lan0{}` \
         (health defaults: probe every {} ms, down after {} unanswered, up after {} answered)",
        match r.shaped {
            Some(mb) => format!("ISP lines shaped to {mb} Mbit/s with tbf"),
            None => "unshaped veths".into(),
        },
        if r.pcc_args.is_empty() {
            String::new()
        } else {
            format!(" {}", r.pcc_args.join(" "))
        },
        HEALTH.interval_ms,
        HEALTH.down_after,
        HEALTH.up_after
    );
    let _ = writeln!(
        s,
        "- Traffic per run: {FLOWS} fresh UDP flows (one socket each) sending a request to the echo \
         server every {} ms; about half of them hash onto wan0",
        FLOW_INTERVAL.as_millis()
    );
    let _ = writeln!(
        s,
        "- Faults on isp0: *internet dead* = nftables drops every IPv4 packet from the router on \
         the ISP's side (ARP still answered, link up); *carrier loss* = `ip link set up0 down` in \
         the ISP (wan0 loses carrier)"
    );
    let _ = writeln!(
        s,
        "- **failover** = longest gap between two replies of a flow that was on wan0 when the \
         fault began (largest over those flows); **down** = fault → first metrics scrape with \
         `pcc_wan_up{{wan=\"wan0\"}} 0`; **up** = fault removed → `pcc_wan_up` 1 again \
         (metrics polled every 20 ms, so both include up to ~30 ms of polling)"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| fault | runs | failover median | failover max | down median | down max | up median | up max |"
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for fault in [Fault::InternetDead, Fault::Carrier] {
        let runs: Vec<&RunResult> = r.runs.iter().filter(|x| x.fault == fault).collect();
        if runs.is_empty() {
            continue;
        }
        let stat = |f: &dyn Fn(&RunResult) -> Option<f64>| -> (String, String) {
            let v: Vec<f64> = runs.iter().filter_map(|x| f(x)).collect();
            let missing = runs.len() - v.len();
            if v.is_empty() {
                return ("—".into(), "—".into());
            }
            let mx = v.iter().copied().fold(f64::MIN, f64::max);
            let tail = if missing > 0 {
                format!(" ({missing} failed)")
            } else {
                String::new()
            };
            (format!("{:.2} s", median(&v)), format!("{mx:.2} s{tail}"))
        };
        let (fm, fx) = stat(&|x| x.failover);
        let (dm, dx) = stat(&|x| x.down);
        let (um, ux) = stat(&|x| x.up);
        let _ = writeln!(
            s,
            "| {} | {} | {fm} | {fx} | {dm} | {dx} | {um} | {ux} |",
            fault.label(),
            runs.len()
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Per run:\n");
    let _ = writeln!(
        s,
        "| run | fault | flows on wan0 | moved to wan1 | failover | down | up | longest gap on wan1 | note |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    );
    for (i, x) in r.runs.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            i + 1,
            x.fault.label(),
            x.on_wan0,
            x.flows,
            x.moved,
            secs(x.failover),
            secs(x.down),
            secs(x.up),
            secs(x.wan1_gap),
            x.note
                .as_deref()
                .map(|n| n.replace('|', "/").replace('\n', " "))
                .unwrap_or_default()
        );
    }
    s
}

/// What BENCHMARKS.md starts with when it does not exist yet.
pub const BENCHMARKS_HEADER: &str = "# pcc benchmarks\n\n\
Measured numbers. Each `##` section is written by the command it names: re-run that command to \
replace its section (the rest of the file is kept). Lab figures come from network namespaces \
on one machine, so they show pcc's own behaviour (detection, failover, forwarding cost), not \
what a real line or NIC adds.\n";

/// Replaces the `## <title>` section of the markdown file at `path` (up to the next `## `
/// heading) with `section`, or appends it; creates the file with [`BENCHMARKS_HEADER`] if it
/// does not exist.
pub fn update_section(path: &Path, title: &str, section: &str) -> Result<()> {
    let old = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BENCHMARKS_HEADER.to_owned(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new = replace_section(&old, title, section);
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn replace_section(old: &str, title: &str, section: &str) -> String {
    let heading = format!("## {title}");
    let lines: Vec<&str> = old.lines().collect();
    let mut section = section.trim_end().to_owned();
    section.push('\n');
    match lines.iter().position(|l| l.trim_end() == heading) {
        Some(start) => {
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.starts_with("## "))
                .map_or(lines.len(), |k| start + 1 + k);
            let mut out = lines[..start].join("\n");
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&section);
            if end < lines.len() {
                out.push('\n');
                out.push_str(&lines[end..].join("\n"));
                out.push('\n');
            }
            out
        }
        None => {
            let mut out = old.trim_end().to_owned();
            out.push_str("\n\n");
            out.push_str(&section);
            out
        }
    }
}

/// Runs [`failover`] and writes its section into `out` (BENCHMARKS.md or a scratch file).
pub fn failover_to_file(opts: &FailoverOpts, out: &Path, command: &str) -> Result<FailoverReport> {
    let bin = match &opts.pcc_ctl {
        Some(p) => Some(p.clone()),
        None => crate::pcc_ctl_path().ok(),
    };
    let report = failover(opts)?;
    let md = render_markdown(&report, &MachineInfo::probe_for(bin.as_deref()), command);
    update_section(out, "Failover", &md)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_replaced_or_appended() {
        let base = "# T\n\nintro\n\n## A\n\nold a\n\n## B\n\nb\n";
        let r = replace_section(base, "A", "## A\n\nnew a\n");
        assert_eq!(r, "# T\n\nintro\n\n## A\n\nnew a\n\n## B\n\nb\n");
        let r = replace_section(base, "B", "## B\n\nnew b");
        assert_eq!(r, "# T\n\nintro\n\n## A\n\nold a\n\n## B\n\nnew b\n");
        let r = replace_section(base, "C", "## C\n\nc\n");
        assert!(r.ends_with("## B\n\nb\n\n## C\n\nc\n"), "{r}");
        let r = replace_section(BENCHMARKS_HEADER, "Failover", "## Failover\n\nx\n");
        assert!(r.starts_with("# pcc benchmarks") && r.ends_with("## Failover\n\nx\n"));
    }
}
