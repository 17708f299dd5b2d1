//! `cargo xtask bench forward`: forwarding rate of the lab router, pcc vs the kernel.
//!
//! trafgen (netsniff-ng) in client c1, pinned to CPU 0, sends 64-byte UDP frames (60 bytes
//! plus FCS) over 6400 flows (50 server addresses × 256 source ports) to the router's lan0
//! through the switch. Behind the router each ISP's `up0` carries `pcc-bench attach sink`
//! (an XDP program that counts and drops IPv4 and passes ARP), so nothing past the router
//! costs CPU. Three set-ups, interleaved in every repetition:
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
//! transmit into the ISP veth and the sink there) runs on CPU 1 while trafgen and the switch
//! run on CPU 0. The ISPs' `up0` run threaded NAPI too (pinned to CPU 1), so the sinks' work
//! is not done in the router thread's context. CPU cost = time lan0's NAPI thread was on the
//! CPU (`/proc/PID/schedstat`) over the window divided by the packets that reached the sinks
//! (lan0's XDP drops for the ceiling): it counts the router's work only, not other load on the
//! machine.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bench::{MachineInfo, update_section};
use crate::lab::Lab;
use crate::proc::LabProcess;

/// Number of flows trafgen cycles through: 50 destination addresses × 256 source ports.
pub const FLOWS: usize = 6400;
/// The CPU the generator is pinned to, and the one the router's NAPI thread is pinned to.
const GEN_CPU: usize = 0;
const ROUTER_CPU: usize = 1;
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
    /// `None`: as fast as trafgen goes; `Some(pps)`: rate-limited.
    pub offered_pps: Option<u64>,
    /// Frames the switch delivered into the router's lan0 per second (`p-lan` tx).
    pub sent_pps: f64,
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
    v.sort_by(|a, b| a.total_cmp(b));
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

/// Sum of `*xdp_drops` counters of `ethtool -S dev` in `node`.
fn xdp_drops(lab: &Lab, node: &str, dev: &str) -> Result<u64> {
    let out = lab.run(node, &["ethtool", "-S", dev])?;
    let mut n = 0;
    let mut found = false;
    for l in out.lines() {
        if let Some((k, v)) = l.trim().split_once(':')
            && k.trim().ends_with("xdp_drops")
        {
            n += v.trim().parse::<u64>().unwrap_or(0);
            found = true;
        }
    }
    ensure!(found, "no xdp_drops in `ethtool -S {dev}` in {node}: {out}");
    Ok(n)
}

fn mac_of(lab: &Lab, node: &str, dev: &str) -> Result<String> {
    let out = lab.run(node, &["ip", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["address"]
        .as_str()
        .context("no MAC address")?
        .to_owned())
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
    cfg: PathBuf,
    opts: &'a ForwardOpts,
    napi_threads: Vec<u32>,
    /// The ISP `up0` NAPI threads (the sinks), pinned beside the router's.
    sink_threads: Vec<u32>,
    up0_before: Vec<u32>,
    hz: f64,
}

impl Bed<'_> {
    /// Pins lan0's NAPI thread(s) (this lab's: the ones not there before) to the router CPU.
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
        for p in now.iter().chain(&self.sink_threads) {
            pin_thread(*p, ROUTER_CPU);
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

    /// One window: trafgen at full speed or at `rate`, counters read after the warm-up and
    /// `seconds` later.
    fn window(&self, mode: Mode, rate: Option<u64>) -> Result<Window> {
        let secs = self.opts.seconds;
        let limit = (secs + WARMUP.as_secs_f64() + 3.0).ceil() as u64;
        // Bounded by count too: at most 5 Mpps for the whole time.
        let count = (limit * 5_000_000).to_string();
        let cfg = self.cfg.to_string_lossy().into_owned();
        let limit_s = limit.to_string();
        let gen_cpu = GEN_CPU.to_string();
        let mut args: Vec<String> = [
            "timeout",
            "-s",
            "INT",
            &limit_s,
            "nice",
            "-n",
            "-20",
            "taskset",
            "-c",
            &gen_cpu,
            "trafgen",
            "-o",
            "eth0",
            "-i",
            &cfg,
            "-P",
            "1",
            "-n",
            &count,
            "--no-sock-mem",
            "-Q",
            "-C",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(r) = rate {
            args.extend(["-b".into(), format!("{r}pps")]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut gen_proc = self.lab.spawn("c1", &argv)?;
        std::thread::sleep(WARMUP);
        ensure!(
            gen_proc.is_running(),
            "trafgen exited early: {}{}",
            gen_proc.stdout_text(),
            gen_proc.stderr_text()
        );
        // Each counter gets its own timestamp (the middle of its read: `ip netns exec` takes
        // tens of ms on a busy machine), and each rate its own interval.
        let stamp = |t: Instant| Instant::now() - (Instant::now() - t) / 2;
        let t = Instant::now();
        let sent0 = self.lab.link_stats("switch", "p-lan")?.tx_packets;
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
        let sent1 = self.lab.link_stats("switch", "p-lan")?.tx_packets;
        let dts = (stamp(t) - ts0).as_secs_f64();
        gen_proc.signal(libc::SIGINT);
        let _ = gen_proc.wait_timeout(Duration::from_secs(5));
        drop(gen_proc);
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
            sent_pps: sent1.saturating_sub(sent0) as f64 / dts,
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
                "bench forward: {:<8} {:>10}: sent {:>9.0}/s counted {:>9.0}/s, thread {:>5.1} %, CPU{ROUTER_CPU} {:>5.1} % busy, CPU{GEN_CPU} {:>5.1} %, {:>6.0} ns/packet",
                format!("{mode:?}"),
                rate.map_or("max".into(), |r| format!("{r} pps")),
                w.sent_pps,
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

fn trafgen_config(lan0_mac: &str, c1_mac: &str, src: &str) -> String {
    // 14 + 20 + 8 + 18 = 60 bytes, 64 with the FCS. Destination 203.0.113.10..59 and source
    // port 1024..1279 step together: 50 × 256 = 6400 flows (the periods are coprime... 50 and
    // 256 share 2, so lcm = 6400).
    format!(
        "{{ eth(da={lan0_mac}, sa={c1_mac}), \
         ipv4(sa={src}, da=203.0.113.10, da[3]=dinc(10, 59), ttl=64), \
         udp(sp=dinc(1024, 1279), dp=9), fill(0x00, 18) }}\n"
    )
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
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
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
        "{} not found (cargo build --release -p pcc-ctl)",
        bench.display()
    );
    let lab = Lab::builder().clients(1).pcc_ctl(&pcc_ctl).build()?;
    let mut notes = Vec::new();
    let lan0_mac = mac_of(&lab, "router", "lan0")?;
    let c1_mac = mac_of(&lab, "c1", "eth0")?;
    let cfg = lab.dir().join("forward.trafgen");
    fs::write(
        &cfg,
        trafgen_config(&lan0_mac, &c1_mac, &lab.client_addr(1).to_string()),
    )?;
    // ARP entry for the router on the client is not needed (trafgen writes the MAC), but
    // the router needs the ISPs' MACs: resolve them before the sinks go on.
    for k in 0..2 {
        let _ = lab.exec(
            "router",
            &["ping", "-c", "1", "-W", "1", &lab.isp_addr(k).to_string()],
        );
    }
    let mut bed = Bed {
        lab: &lab,
        cfg,
        opts,
        napi_threads: Vec::new(),
        sink_threads: Vec::new(),
        up0_before: Vec::new(),
        hz: clk_tck(),
    };
    // The sinks' NAPI gets its own threads too, so that its work is not charged to the
    // router's thread (softirqs raised there would otherwise run in its context).
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
        "- Traffic: `trafgen` (netsniff-ng) in client c1, one process pinned to CPU {GEN_CPU} at nice -20 (the switch's bridge work runs in softirq on the same CPU), 64-byte UDP frames (60 bytes + FCS) to the router's lan0 MAC through the lab switch (a bridge), {FLOWS} flows (destination 203.0.113.10–59 × source port 1024–1279). Behind the router each ISP's `up0` runs `pcc-bench attach sink` (native XDP: counts and drops IPv4, passes ARP), so nothing past the router costs CPU; the sinks stay attached through every run"
    );
    let _ = writeln!(
        s,
        "- Set-ups, interleaved in each of {} repetitions: **ceiling** = `pcc-bench attach drop lan0` on the router (what the generator can deliver); **kernel** = `ip_forward=1`, `ip route replace default nexthop via 198.18.1.1 dev wan0 nexthop via 198.18.2.1 dev wan1` with `net.ipv4.fib_multipath_hash_policy=1`, nftables `masquerade` on wan0/wan1; **pcc** = `pcc-ctl up --wan wan0,wan1 --lan lan0 --probe-interval 10000 --down-after 1000` (the sinks drop pcc's ICMP health probes too, so health is slowed down to never declare a WAN down during a run; the WANs were checked up before each run)",
        r.runs
    );
    let _ = writeln!(
        s,
        "- CPU placement: {}",
        if r.threaded_napi {
            format!(
                "the router's lan0 runs threaded NAPI (`echo 1 > /sys/class/net/lan0/threaded`) with its kthread pinned to CPU {ROUTER_CPU} at SCHED_FIFO 1 (the machine is shared; this keeps other work from taking the router's CPU), so everything the router does for a packet (XDP program or kernel stack up to the transmit into the ISP veth) runs in that thread on CPU {ROUTER_CPU}; the ISPs' `up0` run threaded NAPI as well (the sinks, also on CPU {ROUTER_CPU} at SCHED_FIFO 1, but in their own threads); trafgen and the switch run on CPU {GEN_CPU}"
            )
        } else {
            "threaded NAPI was not available: the router's work ran wherever the veth NAPI was scheduled (the generator's CPU)".to_owned()
        }
    );
    let _ = writeln!(
        s,
        "- veth fairness: the lab turns GRO on for every veth, which puts veth receive into NAPI mode with or without an XDP program, so lan0 receives through the same NAPI ring in all three set-ups; the kernel run attaches no program to lan0 (pcc-bench has no XDP_PASS program, and the kernel path is measured as a router would run it). With an XDP program, veth must give XDP a linear frame with 256 bytes of headroom and copies frames that lack it; that copy is in the ceiling and in pcc, not in the kernel run, and it is one reason the ceiling's CPU figure is subtracted only as a reference"
    );
    let _ = writeln!(
        s,
        "- **max pps** = packets counted behind the router (sinks; lan0's XDP drops for the ceiling, from `ethtool -S … xdp_drops`) per second over a {:.0} s window after {:.1} s of warm-up, trafgen unlimited (**delivered to lan0** = frames the switch put into lan0's ring, `p-lan` tx; frames that find the ring full are dropped before it and not in this count); **ns/packet** = CPU time of the router's lan0 NAPI thread (`/proc/PID/schedstat`) over the window ÷ packets counted, with trafgen limited to {} pps (`-b`), so other work on the machine is not in it; **net** = minus the ceiling's ns/packet (what forwarding adds to receiving a frame and dropping it in XDP). Medians of {} runs. Other work shares the machine: CPU {ROUTER_CPU} was {:.0} % busy with the lab idle just before the runs, which lowers the max pps figures; the ns/packet figures count only the router's thread, but softirq work of other namespaces that the kernel runs when that thread re-enables bottom halves is charged to it too, so they are upper bounds",
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
        "- Reading the figures: **max pps** is the router's capacity only where it is clearly below what the switch delivered into lan0 (frames lost in or behind the router) and the router's thread was busy ≥ 90 % (*router (saturated)*); losses with the thread less busy point at scheduling (the sinks' threads share its CPU; a veth ring holds 256 frames) or at the kernel path itself, and where counted and delivered match, the generator was the limit. When the router is not saturated its NAPI thread sleeps and is woken for each batch; the wake-up and context switch are charged to that batch's packets, so the lighter the per-packet work (the ceiling's XDP_DROP) the smaller the batches and the higher the ns/packet can come out. A negative **net** figure means that overhead dominates the difference, not that forwarding is free; the ns/packet at max (bigger batches) is shown beside it"
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| set-up | max pps | delivered to lan0 | bound | router thread busy at max | ns/packet at max | ns/packet at {} kpps | net of ceiling | counted at {} kpps |",
        r.rate_pps / 1000,
        r.rate_pps / 1000
    );
    let _ = writeln!(
        s,
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    let ceiling_ns = r.median_of(Mode::Ceiling, true, |w| w.ns_per_packet);
    for mode in Mode::ALL {
        let pps = r.median_of(mode, false, |w| w.pps);
        let sent = r.median_of(mode, false, |w| w.sent_pps);
        let busy = r.median_of(mode, false, |w| w.napi_busy);
        let ns_max = r.median_of(mode, false, |w| w.ns_per_packet);
        let ns = r.median_of(mode, true, |w| w.ns_per_packet);
        let counted = r.median_of(mode, true, |w| w.pps);
        let net = if mode == Mode::Ceiling {
            "—".to_owned()
        } else {
            nsp(ns - ceiling_ns)
        };
        let bound = if pps >= 0.95 * sent {
            "generator"
        } else if busy >= 0.9 {
            "router (saturated)"
        } else {
            "frames lost past lan0, thread not saturated"
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {bound} | {:.0} % | {} | {} | {} | {} |",
            mode.label(),
            kpps(pps),
            kpps(sent),
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
        "| run | set-up | offered | delivered/s | counted/s | router thread busy | CPU {ROUTER_CPU} busy | CPU {GEN_CPU} busy | ns/packet |"
    );
    let _ = writeln!(
        s,
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let per_run = Mode::ALL.len() * 2;
    for (i, w) in r.windows.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} | {} | {:.0} % | {:.0} % | {:.0} % | {} |",
            i / per_run + 1,
            w.mode,
            w.offered_pps
                .map_or("max".to_owned(), |p| format!("{} kpps", p / 1000)),
            kpps(w.sent_pps),
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
