//! `cargo xtask bench controller`: pcc-ctl's own cost — RSS and CPU at idle with default
//! probing, and while ~100k connections churn through the dataplane (the garbage collector
//! walks the table every 2 s). Writes the `## Controller` section of BENCHMARKS.md.
use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::Lab;

/// A raw-socket UDP sender: `flows` distinct flows (two LAN source addresses × source ports)
/// to the servers' discard port, round-robin until `seconds` pass. Replies go nowhere.
const CHURN_PY: &str = r#"
import socket, struct, sys, time
srcs, servers, flows, seconds = sys.argv[1].split(","), sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
pkts = []
per_src = flows // len(srcs)
for i in range(flows):
    src, sport = srcs[i // per_src % len(srcs)], 1024 + i % per_src
    dst = servers[i % len(servers)]
    udp = struct.pack("!HHHH", sport, 9, 8 + 4, 0) + b"pcc!"
    ph = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, len(udp))
    udp = udp[:6] + struct.pack("!H", csum(ph + udp) or 0xffff) + udp[8:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xffff, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    pkts.append((ip + udp, dst))
end, sent = time.time() + seconds, 0
while time.time() < end:
    for p, dst in pkts:
        s.sendto(p, (dst, 0))
    sent += len(pkts)
print(sent)
"#;

struct Sample {
    cpu_pct: f64,
    rss_mib: f64,
}

/// The pcc-ctl process: the lab's handle runs it through `ip netns exec` and `sh -c exec`.
fn pcc_pid(start: u32) -> Result<u32> {
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm(start).trim() == "pcc-ctl" {
        return Ok(start);
    }
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if comm(pid).trim() == "pcc-ctl" {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid: u32 = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            if ppid == start {
                return Ok(pid);
            }
        }
    }
    anyhow::bail!("no pcc-ctl process under pid {start}")
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .context("stat")?
        .split_whitespace()
        .collect();
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

fn rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("VmRSS")?
        .parse()?;
    Ok(kb / 1024.0)
}

/// CPU (% of one core, from utime+stime at 100 Hz ticks) and peak RSS over `secs`.
fn sample(pid: u32, secs: u64) -> Result<Sample> {
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    let mut rss: f64 = 0.0;
    while t0.elapsed() < Duration::from_secs(secs) {
        rss = rss.max(rss_mib(pid)?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let ticks = cpu_ticks(pid)? - c0;
    Ok(Sample {
        cpu_pct: ticks as f64 / 100.0 / t0.elapsed().as_secs_f64() * 100.0,
        rss_mib: rss,
    })
}

/// Measures and writes the section into `out` (BENCHMARKS.md, or a scratch file for the
/// smoke test); returns the section.
pub fn run(seconds: u64, flows: u32, out: &Path) -> Result<String> {
    ensure!(
        crate::is_root(),
        "the benchmark needs root (it creates network namespaces)"
    );
    ensure!(
        (2..=600).contains(&seconds) && (100..=200_000).contains(&flows),
        "--seconds 2..=600, --flows 100..=200000"
    );
    let lab = Lab::builder()
        .clients(1)
        .servers(50)
        .build()
        .context("building the lab")?;
    let mut pcc = lab.start_pcc(&["--max-connections", "262144"])?;
    let pid = pcc_pid(pcc.process().pid())?;
    std::thread::sleep(Duration::from_secs(3));
    let idle = sample(pid, seconds)?;

    let script = lab.dir().join("churn.py");
    std::fs::write(&script, CHURN_PY)?;
    let servers: Vec<String> = lab.server_addrs().iter().map(ToString::to_string).collect();
    let churn_secs = seconds + 10;
    let _sender = lab.spawn(
        "c1",
        &[
            "python3",
            script.to_str().unwrap(),
            "198.19.10.100,198.19.10.101",
            &servers.join(","),
            &flows.to_string(),
            &churn_secs.to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_secs(8));
    let busy = sample(pid, seconds)?;
    let active = pcc.metrics()?.get("pcc_flows_active", &[]).unwrap_or(0.0);
    pcc.stop()?;
    drop(lab);

    let m = crate::bench::MachineInfo::probe();
    let mut s = String::from(
        "## Controller\n\npcc-ctl's own cost, from /proc (utime+stime, VmRSS peak), with default health probing (2 WANs, 20 probes/s each) and the conntrack garbage collector walking the table every 2 s.\n\n",
    );
    let mut command = String::from("cargo xtask bench controller");
    if seconds != 30 {
        command += &format!(" --seconds {seconds}");
    }
    if flows != 100_000 {
        command += &format!(" --flows {flows}");
    }
    let _ = writeln!(s, "- Command: `{command}`");
    let _ = writeln!(s, "- When and where: {}", m.when_and_where());
    let _ = writeln!(
        s,
        "- Churn: a raw-socket sender in a LAN client cycles {flows} distinct UDP flows (2 source addresses × ports, 50 servers) as fast as Python sends; each new flow is a new connection, idle ones expire after 30 s\n"
    );
    s.push_str("| state | active connections | CPU (% of one core) | RSS peak |\n| --- | ---: | ---: | ---: |\n");
    let _ = writeln!(
        s,
        "| idle, {seconds} s | 0 | {:.2} % | {:.1} MiB |",
        idle.cpu_pct, idle.rss_mib
    );
    let _ = writeln!(
        s,
        "| churning, {seconds} s | {active:.0} | {:.2} % | {:.1} MiB |",
        busy.cpu_pct, busy.rss_mib
    );
    crate::bench::update_section(out, "Controller", &s)?;
    Ok(s)
}
