//! `cargo xtask bench forward`: forwarding rate of the lab router, pcc vs the kernel.
//!
//! The generator is `pcc-bench generate`: the dataplane object's `bench_gen` XDP program run
//! with BPF_PROG_TEST_RUN in live-frames mode, in the switch namespace, pinned to CPU 0, with
//! `p-lan` (the switch-side peer of the router's lan0) as ingress device. Its XDP_TX becomes a
//! transmit into p-lan, so 64-byte UDP frames (60 bytes plus FCS, c1's source MAC and address,
//! lan0's MAC) go straight into lan0's receive ring, bypassing the bridge, over 6400 flows
//! (50 server addresses × 128 source ports). It replaced trafgen in client c1, which went
//! through socket, qdisc and bridge and topped out near the router's rate (about 150 kpps
//! here), so it could not show the router's limit; one core sends millions of frames per
//! second this way. Behind the router each ISP's `up0` carries `pcc-bench attach sink` (an
//! XDP program that counts and drops IPv4 and passes ARP), so nothing past the router costs
//! CPU. Three set-ups, interleaved in every repetition:
//!
//! - **ceiling**: `pcc-bench attach drop lan0` on the router: what the generator can put into
//!   the router's LAN port;
//! - **kernel**: `ip_forward=1`, an ECMP default route over both ISPs with
//!   `fib_multipath_hash_policy=1` (L4 hash), nftables masquerade on wan0/wan1;
//! - **pcc**: `pcc-ctl up --wan wan0,wan1 --lan lan0` (health probes every 10 s, down after
//!   1000 misses: the sinks drop the probes, so the WANs must not be declared down).
//!
//! The router's lan0 runs threaded NAPI (`/sys/class/net/lan0/threaded`) with its kthread
//! pinned to CPU 1, so the router's receive work (XDP program or kernel stack, plus the
//! transmit into the ISP veth) runs on CPU 1 while the generator runs on CPU 0. The ISPs'
//! `up0` run threaded NAPI too, pinned to CPU 0 (see `SINK_CPU`), so the sinks' work is
//! neither done in the router thread's context nor waits for it. CPU cost = time lan0's NAPI
//! thread was on the CPU (`/proc/PID/schedstat`) over the window divided by the packets that
//! reached the sinks (lan0's XDP drops for the ceiling): it counts the router's work only, not
//! other load on the machine.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};

use crate::{
    bench::{MachineInfo, update_section},
    lab::Lab,
    proc::LabProcess,
};

/// Flows the generator cycles through: 50 destination addresses × 128 source ports
/// (`pcc_common::generator::GEN_FLOWS`, which this crate does not depend on).
pub const FLOWS: usize = 6400;
/// The CPU the generator is pinned to, and the one the router's NAPI thread is pinned to.
const GEN_CPU: usize = 0;
const ROUTER_CPU: usize = 1;
/// The sinks' NAPI threads run beside the generator: at the router's real-time priority on
/// its CPU they waited while the saturated router thread ran, and their 256-frame rings
/// overflowed (frames lost past the router that the router had forwarded). Real-time here,
/// they preempt the generator, which is several times faster than the router.
const SINK_CPU: usize = GEN_CPU;
/// Warm-up before the measuring window opens.
const WARMUP: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Ceiling,
    Kernel,
    Pcc,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Ceiling, Mode::Kernel, Mode::Pcc];

    pub fn label(self) -> &'static str {
        match self {
            Mode::Ceiling => "generator ceiling (XDP_DROP on lan0)",
            Mode::Kernel => "kernel (ip_forward, ECMP L4, nft masquerade)",
            Mode::Pcc => "pcc",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ForwardOpts {
    /// Repetitions of each set-up (medians are reported).
    pub runs: usize,
    /// Length of each measuring window.
    pub seconds: f64,
    /// Offered rate of the fixed-rate (CPU cost) measurement, packets/s.
    pub rate_pps: u64,
    pub pcc_ctl: Option<PathBuf>,
    pub verbose: bool,
}

impl Default for ForwardOpts {
    fn default() -> Self {
        Self {
            runs: 3,
            seconds: 5.0,
            rate_pps: 100_000,
            pcc_ctl: None,
            verbose: false,
        }
    }
}

/// One measuring window.
#[derive(Clone, Debug)]
pub struct Window {
    pub mode: Mode,
    /// `None`: as fast as the generator goes; `Some(pps)`: paced.
    pub offered_pps: Option<u64>,
    /// Frames the generator transmitted into `p-lan` per second (delivered or not).
    pub generated_pps: f64,
    /// Of those, frames that went into lan0's receive ring per second (`p-lan`'s
    /// `xdp_xmit`; the rest found the ring full: `xdp_xmit_errors`).
    pub delivered_pps: f64,
    /// Frames counted behind the router per second (sinks; lan0's XDP drops for the ceiling).
    pub pps: f64,
    /// Busy fraction of the router's CPU and of the generator's CPU over the window.
    pub router_cpu_busy: f64,
    pub gen_cpu_busy: f64,
    /// Fraction of the window lan0's NAPI thread was on a CPU.
    pub napi_busy: f64,
    /// Router CPU ns (lan0's NAPI thread) per counted packet.
    pub ns_per_packet: f64,
}

#[derive(Clone, Debug)]
pub struct ForwardReport {
    pub lab_prefix: String,
    pub windows: Vec<Window>,
    pub runs: usize,
    pub seconds: f64,
    pub rate_pps: u64,
    /// Whether lan0's NAPI thread could be pinned to CPU 1.
    pub threaded_napi: bool,
    /// Busy fraction of CPU 1 with the lab idle (other load on the machine).
    pub idle_router_cpu_busy: f64,
    pub notes: Vec<String>,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl ForwardReport {
    /// Median of `f` over the windows of `mode` at `offered`.
    pub fn median_of(&self, mode: Mode, fixed: bool, f: impl Fn(&Window) -> f64) -> f64 {
        let mut v: Vec<f64> = self
            .windows
            .iter()
            .filter(|w| w.mode == mode && w.offered_pps.is_some() == fixed)
            .map(f)
            .collect();
        median(&mut v)
    }
}

/// `(busy, total)` jiffies of each CPU from /proc/stat.
fn cpu_times() -> Result<Vec<(u64, u64)>> {
    let text = fs::read_to_string("/proc/stat")?;
    let mut out = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("cpu") else {
            continue;
        };
        if !rest.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        let v: Vec<u64> = rest
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest is inside user)
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        out.push((total - idle, total));
    }
    Ok(out)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Sums of the `ethtool -S dev` counters in `node` whose names end with each of `suffixes`.
fn ethtool_sums<const N: usize>(
    lab: &Lab,
    node: &str,
    dev: &str,
    suffixes: [&str; N],
) -> Result<[u64; N]> {
    let out = lab.run(node, &["ethtool", "-S", dev])?;
    let mut sums = [0; N];
    let mut found = [false; N];
    for l in out.lines() {
        let Some((k, v)) = l.trim().split_once(':') else {
            continue;
        };
        for (i, suffix) in suffixes.iter().enumerate() {
            if k.trim().ends_with(suffix) {
                sums[i] += v.trim().parse::<u64>().unwrap_or(0);
                found[i] = true;
            }
        }
    }
    for (i, f) in found.iter().enumerate() {
        ensure!(
            f,
            "no {} in `ethtool -S {dev}` in {node}: {out}",
            suffixes[i]
        );
    }
    Ok(sums)
}

/// Sum of `*xdp_drops` counters of `ethtool -S dev` in `node`.
fn xdp_drops(lab: &Lab, node: &str, dev: &str) -> Result<u64> {
    Ok(ethtool_sums(lab, node, dev, ["xdp_drops"])?[0])
}

/// `(delivered, ring full)`: frames transmitted from `p-lan` into lan0's ring and frames
/// dropped because it was full.
fn into_lan0(lab: &Lab) -> Result<(u64, u64)> {
    let [ok, full] = ethtool_sums(lab, "switch", "p-lan", ["xdp_xmit", "xdp_xmit_errors"])?;
    Ok((ok, full))
}

/// PIDs of kernel threads whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(d) = fs::read_dir("/proc") {
        for e in d.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with(prefix)) {
                v.push(pid);
            }
        }
    }
    v
}

/// Pins thread `pid` to `cpu`, nice -20 and SCHED_FIFO 1: other work on the machine must not
/// take the CPU from the lab's packet path.
fn pin_thread(pid: u32, cpu: usize) {
    let _ = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    let _ = std::process::Command::new("renice")
        .args(["-n", "-20", "-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    // Real-time (SCHED_FIFO 1) on top: under other load a nice -20 thread still waits long
    // enough for its 256-frame veth ring to overflow. The kernel's RT throttling leaves others
    // 5 % of the CPU, and the threads go away with the lab's veths.
    let _ = std::process::Command::new("chrt")
        .args(["-f", "-p", "1", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status();
}

/// Nanoseconds the threads `pids` have been on a CPU (`/proc/PID/schedstat`, first field).
fn runtime_ns(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/schedstat")).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Starts `pcc-bench attach KIND DEV` in `node` and waits for `attached`.
fn attach(lab: &Lab, bench: &Path, node: &str, kind: &str, dev: &str) -> Result<LabProcess> {
    let mut p = lab.spawn(node, &[&bench.to_string_lossy(), "attach", kind, dev])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if p.stdout_text().lines().any(|l| l.trim() == "attached") {
            return Ok(p);
        }
        if !p.is_running() || Instant::now() > deadline {
            bail!(
                "pcc-bench attach {kind} {dev} in {node} did not attach: {}",
                p.stderr_text()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a `pcc-bench attach` and returns the packets it counted.
fn detach(mut p: LabProcess) -> Result<u64> {
    p.signal(libc::SIGTERM);
    let st = p.wait_timeout(Duration::from_secs(10));
    ensure!(
        st.is_some_and(|s| s.success()),
        "{} did not stop cleanly: {}",
        p.name(),
        p.stderr_text()
    );
    let out = p.stdout_text();
    let json = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("{}");
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    Ok(v["packets"].as_u64().unwrap_or(0))
}

struct Bed<'a> {
    lab: &'a Lab,
    /// `pcc-bench`, the generator, sinks and XDP_DROP floor.
    bench: PathBuf,
    /// `pcc-bench generate` options: MACs and source address of the frames.
    frame_args: Vec<String>,
    opts: &'a ForwardOpts,
    napi_threads: Vec<u32>,
    /// The ISP `up0` NAPI threads (the sinks), pinned to `SINK_CPU`.
    sink_threads: Vec<u32>,
    up0_before: Vec<u32>,
    hz: f64,
}

impl Bed<'_> {
    /// Pins lan0's NAPI thread(s) (this lab's: the ones not there before) to the router CPU,
    /// and the sinks' to theirs.
    fn pin_napi(&mut self, before: &[u32]) -> bool {
        let now: Vec<u32> = threads_named("napi/lan0-")
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if !self.sink_threads.is_empty() {
            self.sink_threads = threads_named("napi/up0-")
                .into_iter()
                .filter(|p| !self.up0_before.contains(p))
                .collect();
        }
        for p in &now {
            pin_thread(*p, ROUTER_CPU);
        }
        for p in &self.sink_threads {
            pin_thread(*p, SINK_CPU);
        }
        self.napi_threads = now;
        !self.napi_threads.is_empty()
    }

    fn counted(&self, mode: Mode) -> Result<u64> {
        Ok(match mode {
            Mode::Ceiling => xdp_drops(self.lab, "router", "lan0")?,
            _ => xdp_drops(self.lab, "isp0", "up0")? + xdp_drops(self.lab, "isp1", "up0")?,
        })
    }

    /// One window: the generator at full speed or at `rate`, counters read after the warm-up
    /// and `seconds` later.
    fn window(&self, mode: Mode, rate: Option<u64>) -> Result<Window> {
        let secs = self.opts.seconds;
        let limit = (secs + WARMUP.as_secs_f64() + 3.0).ceil() as u64;
        // Bounded by count too: at most 10 Mpps for the whole time.
        let count = (limit * 10_000_000).to_string();
        let limit_s = limit.to_string();
        let gen_cpu = GEN_CPU.to_string();
        let bench = self.bench.to_string_lossy();
        let mut args: Vec<&str> = vec![
            "nice",
            "-n",
            "-20",
            "taskset",
            "-c",
            &gen_cpu,
            &bench,
            "generate",
            "p-lan",
            "--count",
            &count,
            "--seconds",
            &limit_s,
        ];
        args.extend(self.frame_args.iter().map(String::as_str));
        let rate_s = rate.map(|r| r.to_string());
        if let Some(r) = &rate_s {
            args.extend(["--rate", r]);
        }
        let mut gen_proc = self.lab.spawn("switch", &args)?;
        std::thread::sleep(WARMUP);
        ensure!(
            gen_proc.is_running(),
            "pcc-bench generate exited early: {}{}",
            gen_proc.stdout_text(),
            gen_proc.stderr_text()
        );
        // Each counter gets its own timestamp (the middle of its read: `ip netns exec` takes
        // tens of ms on a busy machine), and each rate its own interval.
        let stamp = |t: Instant| Instant::now() - (Instant::now() - t) / 2;
        let t = Instant::now();
        let (delivered0, full0) = into_lan0(self.lab)?;
        let ts0 = stamp(t);
        let t = Instant::now();
        let n0 = self.counted(mode)?;
        let tn0 = stamp(t);
        let c0 = cpu_times()?;
        let r0 = runtime_ns(&self.napi_threads);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(secs));
        if std::env::var_os("PCC_FWD_DEBUG").is_some() {
            let top = std::process::Command::new("top")
                .args(["-bn1", "-H", "-w", "200"])
                .output();
            if let Ok(o) = top {
                let t = String::from_utf8_lossy(&o.stdout);
                eprintln!("{}", t.lines().take(25).collect::<Vec<_>>().join("\n"));
            }
            for (n, d) in [("router", "lan0"), ("router", "wan0"), ("isp0", "up0")] {
                if let Ok(o) = self.lab.run(n, &["ethtool", "-S", d]) {
                    eprintln!(
                        "{n} {d}: {}",
                        o.lines()
                            .filter(|l| !l.ends_with(": 0"))
                            .collect::<Vec<_>>()
                            .join(" |")
                    );
                }
            }
        }
        let c1 = cpu_times()?;
        let r1 = runtime_ns(&self.napi_threads);
        let dt = t0.elapsed().as_secs_f64();
        let t = Instant::now();
        let n1 = self.counted(mode)?;
        let dtn = (stamp(t) - tn0).as_secs_f64();
        let t = Instant::now();
        let (delivered1, full1) = into_lan0(self.lab)?;
        let dts = (stamp(t) - ts0).as_secs_f64();
        gen_proc.signal(libc::SIGINT);
        let stopped = gen_proc.wait_timeout(Duration::from_secs(5));
        ensure!(
            stopped.is_some_and(|s| s.success()),
            "pcc-bench generate did not stop cleanly: {}",
            gen_proc.stderr_text()
        );
        drop(gen_proc);
        let delivered = delivered1.saturating_sub(delivered0);
        let generated = delivered + full1.saturating_sub(full0);
        let busy = |cpu: usize| -> f64 {
            match (c0.get(cpu), c1.get(cpu)) {
                (Some(a), Some(b)) if b.1 > a.1 => (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
                _ => f64::NAN,
            }
        };
        let router_busy = busy(ROUTER_CPU);
        // The router's own work: lan0's NAPI thread. Without it, all of CPU 1's busy time.
        let router_busy_ns = if self.napi_threads.is_empty() {
            match (c0.get(ROUTER_CPU), c1.get(ROUTER_CPU)) {
                (Some(a), Some(b)) => (b.0 - a.0) as f64 / self.hz * 1e9,
                _ => f64::NAN,
            }
        } else {
            r1.saturating_sub(r0) as f64
        };
        let n = n1.saturating_sub(n0);
        let w = Window {
            mode,
            offered_pps: rate,
            generated_pps: generated as f64 / dts,
            delivered_pps: delivered as f64 / dts,
            pps: n as f64 / dtn,
            router_cpu_busy: router_busy,
            napi_busy: router_busy_ns / (dt * 1e9),
            gen_cpu_busy: busy(GEN_CPU),
            // CPU rate over packet rate: the two were read over slightly different intervals.
            ns_per_packet: if n > 0 {
                (router_busy_ns / dt) / (n as f64 / dtn)
            } else {
                f64::NAN
            },
        };
        if self.opts.verbose {
            eprintln!(
                "bench forward: {:<8} {:>10}: generated {:>9.0}/s delivered {:>9.0}/s counted {:>9.0}/s, thread {:>5.1} %, CPU{ROUTER_CPU} {:>5.1} % busy, CPU{GEN_CPU} {:>5.1} %, {:>6.0} ns/packet",
                format!("{mode:?}"),
                rate.map_or("max".into(), |r| format!("{r} pps")),
                w.generated_pps,
                w.delivered_pps,
                w.pps,
                w.napi_busy * 100.0,
                w.router_cpu_busy * 100.0,
                w.gen_cpu_busy * 100.0,
                w.ns_per_packet
            );
        }
        Ok(w)
    }
}

/// Runs the whole benchmark in a fresh lab.
pub fn forward(opts: &ForwardOpts) -> Result<ForwardReport> {
    ensure!((1..=20).contains(&opts.runs), "runs must be 1..=20");
    ensure!(
        (1.0..=60.0).contains(&opts.seconds),
        "seconds must be 1..=60"
    );
    ensure!(
        (1_000..=2_000_000).contains(&opts.rate_pps),
        "rate must be 1000..=2000000 pps"
    );
    let ncpu = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    ensure!(
        ncpu >= 2,
        "needs at least 2 CPUs (generator and router on separate cores)"
    );
    let pcc_ctl = match &opts.pcc_ctl {
        Some(p) => p.clone(),
        None => crate::pcc_ctl_path()?,
    };
    let bench = pcc_ctl.with_file_name("pcc-bench");
    ensure!(
        bench.is_file(),
        "{} not found (cargo build --release -p pcc-bench)",
        bench.display()
    );
    let lab = Lab::builder().clients(1).pcc_ctl(&pcc_ctl).build()?;
    let mut notes = Vec::new();
    // The frames are c1's, sent straight to lan0 (no ARP needed: the generator writes the
    // MACs). The router needs the ISPs' MACs: resolve them before the sinks go on.
    let frame_args = vec![
        "--src-mac".to_owned(),
        lab.mac("c1", "eth0")?,
        "--dst-mac".to_owned(),
        lab.mac("router", "lan0")?,
        "--src".to_owned(),
        lab.client_addr(1).to_string(),
    ];
    for k in 0..2 {
        let _ = lab.exec(
            "router",
            &["ping", "-c", "1", "-W", "1", &lab.isp_addr(k).to_string()],
        );
    }
    let mut bed = Bed {
        lab: &lab,
        bench: bench.clone(),
        frame_args,
        opts,
        napi_threads: Vec::new(),
        sink_threads: Vec::new(),
        up0_before: Vec::new(),
        hz: clk_tck(),
    };
    // The sinks' NAPI gets its own threads too, so that its work is not charged to the
    // router's thread (softirqs raised there would otherwise run in its context) and can run
    // on another CPU.
    let up0_before = threads_named("napi/up0-");
    if lab
        .sh("isp0", "echo 1 > /sys/class/net/up0/threaded")
        .is_ok()
        && lab
            .sh("isp1", "echo 1 > /sys/class/net/up0/threaded")
            .is_ok()
    {
        bed.sink_threads = threads_named("napi/up0-")
            .into_iter()
            .filter(|p| !up0_before.contains(p))
            .collect();
    }
    bed.up0_before = up0_before;
    if bed.sink_threads.is_empty() {
        notes.push("the ISP sinks' NAPI could not be made threaded: their cost is in the router's CPU figures".into());
    }
    let before = threads_named("napi/lan0-");
    let threaded = lab
        .sh("router", "echo 1 > /sys/class/net/lan0/threaded")
        .is_ok();
    let mut threaded_napi = threaded && bed.pin_napi(&before);
    if !threaded_napi {
        notes.push(format!(
            "lan0's NAPI could not be made threaded and pinned: the router's work shares CPU {GEN_CPU} with the generator"
        ));
    }
    // Idle load of the router CPU (other work on the machine).
    let c0 = cpu_times()?;
    std::thread::sleep(Duration::from_secs(1));
    let c1 = cpu_times()?;
    let idle_router_cpu_busy = match (c0.get(ROUTER_CPU), c1.get(ROUTER_CPU)) {
        (Some(a), Some(b)) if b.1 > a.1 => (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
        _ => f64::NAN,
    };
    let mut sinks = vec![
        attach(&lab, &bench, "isp0", "sink", "up0")?,
        attach(&lab, &bench, "isp1", "sink", "up0")?,
    ];
    let mut windows = Vec::new();
    for run in 0..opts.runs {
        for mode in Mode::ALL {
            if opts.verbose {
                eprintln!("bench forward: run {}/{} {mode:?}", run + 1, opts.runs);
            }
            let mut drop_prog = None;
            let mut pcc = None;
            match mode {
                Mode::Ceiling => {
                    drop_prog = Some(attach(&lab, &bench, "router", "drop", "lan0")?);
                }
                Mode::Kernel => {
                    lab.run(
                        "router",
                        &[
                            "sysctl",
                            "-q",
                            "-w",
                            "net.ipv4.ip_forward=1",
                            "net.ipv4.fib_multipath_hash_policy=1",
                        ],
                    )?;
                    lab.ip_batch(
                        "router",
                        &[
                            "route del default".into(),
                            "route del default".into(),
                            "route replace default nexthop via 198.18.1.1 dev wan0 nexthop via 198.18.2.1 dev wan1".into(),
                        ],
                    )?;
                    lab.nft(
                        "router",
                        "table ip pccbench_nat {\n\
                           chain post { type nat hook postrouting priority srcnat; policy accept;\n\
                             oifname { \"wan0\", \"wan1\" } masquerade\n }\n}\n",
                    )?;
                }
                Mode::Pcc => {
                    let h =
                        lab.start_pcc(&["--probe-interval", "10000", "--down-after", "1000"])?;
                    crate::health::wait_wans_up(&h, &["wan0", "wan1"], Duration::from_secs(5))?;
                    pcc = Some(h);
                }
            }
            // XDP attach may recreate the NAPI instance (and its thread): pin again.
            if threaded && !bed.pin_napi(&before) {
                threaded_napi = false;
            }
            let result = (|| -> Result<()> {
                windows.push(bed.window(mode, None)?);
                windows.push(bed.window(mode, Some(opts.rate_pps))?);
                Ok(())
            })();
            match mode {
                Mode::Ceiling => {
                    if let Some(p) = drop_prog.take() {
                        detach(p)?;
                    }
                }
                Mode::Kernel => {
                    lab.run("router", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])?;
                    lab.run("router", &["nft", "delete", "table", "ip", "pccbench_nat"])?;
                    lab.ip_batch(
                        "router",
                        &[
                            "route del default".into(),
                            "route add default via 198.18.1.1 dev wan0 metric 100".into(),
                            "route add default via 198.18.2.1 dev wan1 metric 200".into(),
                        ],
                    )?;
                }
                Mode::Pcc => {
                    if let Some(h) = pcc.take() {
                        let still_up = h
                            .metrics()
                            .map(|m| crate::health::health_summary(&m))
                            .unwrap_or_default();
                        if std::env::var_os("PCC_FWD_DEBUG").is_some() {
                            let t = h.metrics_text().unwrap_or_default();
                            eprintln!(
                                "{}",
                                t.lines()
                                    .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                                    .collect::<Vec<_>>()
                                    .join("\n")
                            );
                        }
                        if opts.verbose {
                            eprintln!("bench forward: pcc health at the end: {still_up}");
                        }
                        let exit = h.stop()?;
                        ensure!(exit.status.success(), "pcc-ctl failed: {}", exit.stderr);
                    }
                }
            }
            result?;
        }
    }
    let mut sink_total = 0;
    for p in sinks.drain(..) {
        sink_total += detach(p)?;
    }
    ensure!(sink_total > 0, "the sinks counted nothing");
    if !threaded_napi && threaded {
        notes.push("lan0's NAPI thread was not found after an XDP attach in some run".into());
    }
    let prefix = lab.prefix().to_owned();
    drop(lab);
    Ok(ForwardReport {
        lab_prefix: prefix,
        windows,
        runs: opts.runs,
        seconds: opts.seconds,
        rate_pps: opts.rate_pps,
        threaded_napi,
        idle_router_cpu_busy,
        notes,
    })
}

fn kpps(v: f64) -> String {
    if v.is_finite() {
        format!("{:.0} kpps", v / 1000.0)
    } else {
        "—".into()
    }
}

fn nsp(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0} ns")
    } else {
        "—".into()
    }
}

/// The `## Forwarding rate` section.
pub fn render_markdown(r: &ForwardReport, m: &MachineInfo, command: &str) -> String {
    let mut s = String::from("## Forwarding rate\n\n");
    let _ = writeln!(
        s,
        "How many packets per second the lab router forwards with pcc and with the kernel doing the same job, and what each forwarded packet costs the router's CPU.\n"
    );
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(
        s,
        "- When and where: {}; {} × {}; kernel {}; pcc-ctl built from `{}`",
        m.date, m.nproc, m.cpu_model, m.kernel, m.commit
    );
    let _ = writeln!(
        s,
        "- Traffic: `pcc-bench generate`, a live-frames generator: the dataplane object's `bench_gen` XDP program run by BPF_PROG_TEST_RUN with `BPF_F_TEST_XDP_LIVE_FRAMES` in the switch namespace, pinned to CPU {GEN_CPU} at nice -20, with ingress device `p-lan` (the switch-side peer of the router's lan0), so the program's XDP_TX transmits each frame straight into lan0's receive ring, bypassing the bridge. 64-byte UDP frames (60 bytes + FCS) with c1's MAC and address as source and lan0's MAC as destination, {FLOWS} flows (destination 203.0.113.10–59 × source port 1024–1151), UDP checksum 0 (none, RFC 768), valid IPv4 header checksum; the kernel recycles a transmitted page without copying the frame in again, and the router translates frames in place, so the program writes all headers afresh on every run. It replaces `trafgen` (netsniff-ng) in client c1, which went through socket, qdisc and bridge and topped out around 150 kpps on this machine, no faster than the router, so its results were bound by the generator; one core sends several Mpps this way. Paced (`--rate`), the program sends a frame only when one is due (`bpf_ktime_get_ns`) and drops the others, so the generator keeps its CPU busy in both modes; between its calls (one per about 10 s of runs) it pauses for about 25 ms while the kernel takes it out of and back into its XDP dispatcher. Behind the router each ISP's `up0` runs `pcc-bench attach sink` (native XDP: counts and drops IPv4, passes ARP), so nothing past the router costs CPU; the sinks stay attached through every run"
    );
    let _ = writeln!(
        s,
        "- Set-ups, interleaved in each of {} repetitions: **ceiling** = `pcc-bench attach drop lan0` on the router (what the generator can put into lan0 and lan0 can take); **kernel** = `ip_forward=1`, `ip route replace default nexthop via 198.18.1.1 dev wan0 nexthop via 198.18.2.1 dev wan1` with `net.ipv4.fib_multipath_hash_policy=1`, nftables `masquerade` on wan0/wan1; **pcc** = `pcc-ctl up --wan wan0,wan1 --lan lan0 --probe-interval 10000 --down-after 1000` (the sinks drop pcc's ICMP health probes too, so health is slowed down to never declare a WAN down during a run; the WANs were checked up before each run)",
        r.runs
    );
    let _ = writeln!(
        s,
        "- CPU placement: {}",
        if r.threaded_napi {
            format!(
                "the router's lan0 runs threaded NAPI (`echo 1 > /sys/class/net/lan0/threaded`) with its kthread pinned to CPU {ROUTER_CPU} at SCHED_FIFO 1 (the machine is shared; this keeps other work from taking the router's CPU), so everything the router does for a packet (XDP program or kernel stack up to the transmit into the ISP veth) runs in that thread on CPU {ROUTER_CPU}, and no other part of the lab runs there; the ISPs' `up0` run threaded NAPI as well (the sinks), pinned to CPU {SINK_CPU} at SCHED_FIFO 1 beside the generator, which they preempt (on CPU {ROUTER_CPU} at the router thread's priority they waited while it was saturated and their rings overflowed); the generator runs on CPU {GEN_CPU}"
            )
        } else {
            "threaded NAPI was not available: the router's work ran wherever the veth NAPI was scheduled (the generator's CPU)".to_owned()
        }
    );
    let _ = writeln!(
        s,
        "- veth fairness: the generator's frames enter lan0's ring as XDP frames (veth's `ndo_xdp_xmit`, which needs NAPI on lan0: the lab turns GRO on for every veth, which enables it with or without an XDP program), the same way in all three set-ups. With an XDP program (ceiling, pcc) lan0 runs it on the frame in place; without one (the kernel run) veth builds an skb around the frame, as a NIC driver does around its receive buffer, and passes it up through GRO. The kernel run attaches no program to lan0 (the kernel path is measured as a router would run it)"
    );
    let _ = writeln!(
        s,
        "- **max pps** = packets counted behind the router (sinks; lan0's XDP drops for the ceiling, from `ethtool -S … xdp_drops`) per second over a {:.0} s window after {:.1} s of warm-up, generator unpaced; **generated** = frames the generator transmitted into `p-lan` per second, **delivered to lan0** = those that went into lan0's 256-frame ring (`ethtool -S p-lan`: `xdp_xmit`; the others found it full: `xdp_xmit_errors`); **ns/packet** = CPU time of the router's lan0 NAPI thread (`/proc/PID/schedstat`) over the window ÷ packets counted, with the generator paced to {} pps, so other work on the machine is not in it; **net** = minus the ceiling's ns/packet (what forwarding adds to receiving a frame and dropping it in XDP). Medians of {} runs. Other work shares the machine: CPU {ROUTER_CPU} was {:.0} % busy with the lab idle just before the runs, which lowers the max pps figures; the ns/packet figures count only the router's thread, but softirq work of other namespaces that the kernel runs when that thread re-enables bottom halves is charged to it too, so they are upper bounds",
        r.seconds,
        WARMUP.as_secs_f64(),
        r.rate_pps,
        r.runs,
        r.idle_router_cpu_busy * 100.0
    );
    for n in &r.notes {
        let _ = writeln!(s, "- Note: {n}");
    }
    let _ = writeln!(
        s,
        "- Reading the figures: **max pps** is the router's capacity where the router took clearly less than was generated (frames found lan0's ring full, or were lost past it) while its thread was busy ≥ 90 % (*router (saturated)*); where counted and generated match, the generator was the limit (*generator*); losses with the thread less busy point at scheduling (other work on CPU {ROUTER_CPU}; the router's thread sleeps whenever lan0's ring runs empty, for instance while other work on CPU {GEN_CPU} holds up the generator) or at the kernel path itself. The generator goes slower when lan0's ring is full (failed transmits, pages coming back from the router) and shares CPU {GEN_CPU} with the sinks, so **generated** is lower in the forwarding set-ups than in the ceiling. When the router is not saturated its NAPI thread sleeps and is woken for each batch of frames; the wake-up and context switch are charged to that batch's packets. The paced generator flushes its transmit batch after every 64 runs (some 10 µs) with one or two frames in it, so at the paced rate the router's thread is woken about once per packet, and the lighter the per-packet work (the ceiling's XDP_DROP) the larger that overhead's share. A negative **net** figure means that overhead dominates the difference, not that forwarding is free; the ns/packet at max (the thread busy, batches full) is the per-packet cost under load"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| set-up | max pps | generated | delivered to lan0 | bound | router thread busy at max | ns/packet at max | ns/packet at {} kpps | net of ceiling | counted at {} kpps |",
        r.rate_pps / 1000,
        r.rate_pps / 1000
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let ceiling_ns = r.median_of(Mode::Ceiling, true, |w| w.ns_per_packet);
    for mode in Mode::ALL {
        let pps = r.median_of(mode, false, |w| w.pps);
        let generated = r.median_of(mode, false, |w| w.generated_pps);
        let delivered = r.median_of(mode, false, |w| w.delivered_pps);
        let busy = r.median_of(mode, false, |w| w.napi_busy);
        let ns_max = r.median_of(mode, false, |w| w.ns_per_packet);
        let ns = r.median_of(mode, true, |w| w.ns_per_packet);
        let counted = r.median_of(mode, true, |w| w.pps);
        let net = if mode == Mode::Ceiling {
            "—".to_owned()
        } else {
            nsp(ns - ceiling_ns)
        };
        let bound = if pps >= 0.95 * generated {
            "generator"
        } else if busy >= 0.9 {
            "router (saturated)"
        } else if delivered < 0.95 * generated {
            "lan0's ring full, thread not saturated"
        } else {
            "frames lost past lan0, thread not saturated"
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {bound} | {:.0} % | {} | {} | {} | {} |",
            mode.label(),
            kpps(pps),
            kpps(generated),
            kpps(delivered),
            busy * 100.0,
            nsp(ns_max),
            nsp(ns),
            net,
            kpps(counted)
        );
    }
    let _ = writeln!(s, "\nPer run:\n");
    let _ = writeln!(
        s,
        "| run | set-up | offered | generated/s | delivered/s | counted/s | router thread busy | CPU {ROUTER_CPU} busy | CPU {GEN_CPU} busy | ns/packet |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let per_run = Mode::ALL.len() * 2;
    for (i, w) in r.windows.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} % | {} |",
            i / per_run + 1,
            w.mode,
            w.offered_pps
                .map_or("max".to_owned(), |p| format!("{} kpps", p / 1000)),
            kpps(w.generated_pps),
            kpps(w.delivered_pps),
            kpps(w.pps),
            w.napi_busy * 100.0,
            w.router_cpu_busy * 100.0,
            w.gen_cpu_busy * 100.0,
            nsp(w.ns_per_packet)
        );
    }
    s
}

/// Runs [`forward`] and writes its section into `out`.
pub fn forward_to_file(opts: &ForwardOpts, out: &Path, command: &str) -> Result<ForwardReport> {
    let bin = match &opts.pcc_ctl {
        Some(p) => Some(p.clone()),
        None => crate::pcc_ctl_path().ok(),
    };
    let report = forward(opts)?;
    let md = render_markdown(&report, &MachineInfo::probe_for(bin.as_deref()), command);
    update_section(out, "Forwarding rate", &md)?;
    Ok(report)
}
