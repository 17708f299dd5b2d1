//! Gateway-health testing: faults injected into an ISP (internet dead, carrier loss, random
//! loss), long-running UDP flows whose reply times show a failover, and waiting on pcc-ctl's
//! health metrics.
//!
//! Faults are nftables `netdev` tables in the ISP namespace (this kernel has no netem):
//!
//! | helper | what | table |
//! | --- | --- | --- |
//! | [`Lab::cut_isp`] | drop all IPv4 arriving from the router on `up0`; ARP still answered ("modem alive, internet dead") | `netdev pcccut` |
//! | [`Lab::cut_isp_inet`] | drop all IPv4 arriving from the internet on `core0`; the gateway itself still answers | `netdev pcccutinet` |
//! | [`Lab::lossy_isp`] | drop `P` % of IPv4 at random on `up0` and on `core0` ingress (both directions of a path through the ISP) | `netdev pccloss` |
//! | [`Lab::carrier_down`] | `ip link set up0 down` in the ISP: the router's WAN veth loses carrier | — |
//!
//! Always on, from the lab's start: BCP 38. Each ISP drops IPv4 from the router whose source
//! is not the router's address on that line, counting all IPv4, LAN sources (un-NATed leaks)
//! and refused sources, before any fault table ([`Lab::isp_lease`], [`Lab::watch_lan_sources`],
//! [`Lab::lan_source_packets`], [`Lab::refused_sources`]; table `netdev pccbcp38`).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{
    lab::{LAN_NET, Lab, WAN_NAMES, wan_of_addr},
    metrics::Metrics,
    pcc::PccHandle,
    proc::LabProcess,
    services::{UDP_ECHO_PORT, python},
};

/// The ISPs' BCP 38 table (`netdev`, hook `up0` ingress, priority -500).
const BCP38: &str = "pccbcp38";

fn isp(i: usize) -> String {
    assert!(i < 2, "the lab has isp0 and isp1, not isp{i}");
    format!("isp{i}")
}

/// An nft script that (re)creates `table netdev <name>` from `body`, idempotently.
fn replace_table(name: &str, body: &str) -> String {
    format!(
        "table netdev {name} {{}}\ndelete table netdev {name}\ntable netdev {name} {{\n{body}\n}}\n"
    )
}

fn delete_table(name: &str) -> String {
    format!("table netdev {name} {{}}\ndelete table netdev {name}\n")
}

impl Lab {
    /// "Modem alive, internet dead": isp`i` drops every IPv4 packet arriving from the router
    /// (ARP still works, so the gateway stays resolved and the link stays up).
    pub fn cut_isp(&self, i: usize) -> Result<()> {
        self.nft(
            &isp(i),
            &replace_table(
                "pcccut",
                "chain in { type filter hook ingress device up0 priority 0; meta protocol ip drop; }",
            ),
        )
        .with_context(|| format!("cutting isp{i}"))
    }

    /// Undoes [`cut_isp`](Self::cut_isp) (idempotent).
    pub fn restore_isp(&self, i: usize) -> Result<()> {
        self.nft(&isp(i), &delete_table("pcccut"))
            .with_context(|| format!("restoring isp{i}"))
    }

    /// isp`i` loses its upstream: every IPv4 packet arriving from the internet on its `core0`
    /// is dropped, while the gateway address itself still answers the router.
    pub fn cut_isp_inet(&self, i: usize) -> Result<()> {
        self.nft(
            &isp(i),
            &replace_table(
                "pcccutinet",
                "chain in { type filter hook ingress device core0 priority 0; meta protocol ip drop; }",
            ),
        )
        .with_context(|| format!("cutting isp{i}'s upstream"))
    }

    /// Undoes [`cut_isp_inet`](Self::cut_isp_inet) (idempotent).
    pub fn restore_isp_inet(&self, i: usize) -> Result<()> {
        self.nft(&isp(i), &delete_table("pcccutinet"))
            .with_context(|| format!("restoring isp{i}'s upstream"))
    }

    /// isp`i` drops `percent` % of the IPv4 packets at random on `up0` ingress (from the
    /// router) and on `core0` ingress (from the internet), so requests and replies through
    /// the ISP both suffer (about 1-(1-p)² end to end; probes of the gateway itself only see
    /// the first). `0` removes the loss.
    pub fn lossy_isp(&self, i: usize, percent: u32) -> Result<()> {
        ensure!(percent <= 100, "loss must be 0..=100 %, got {percent}");
        let script = if percent == 0 {
            delete_table("pccloss")
        } else {
            replace_table(
                "pccloss",
                &format!(
                    "chain up {{ type filter hook ingress device up0 priority 10; meta protocol ip numgen random mod 100 < {percent} drop; }}\n\
                     chain core {{ type filter hook ingress device core0 priority 10; meta protocol ip numgen random mod 100 < {percent} drop; }}"
                ),
            )
        };
        self.nft(&isp(i), &script)
            .with_context(|| format!("setting {percent}% loss on isp{i}"))
    }

    /// `ip link set up0 down` in isp`i`: the router's wan`i` loses carrier.
    pub fn carrier_down(&self, i: usize) -> Result<()> {
        self.run(&isp(i), &["ip", "link", "set", "up0", "down"])
            .map(drop)
    }

    /// `ip link set up0 up` in isp`i` (undoes [`carrier_down`](Self::carrier_down)).
    pub fn carrier_up(&self, i: usize) -> Result<()> {
        self.run(&isp(i), &["ip", "link", "set", "up0", "up"])
            .map(drop)
    }

    /// BCP 38 in isp`i`, always on: IPv4 arriving from the router on `up0` whose source is
    /// not one of `leases` (the router's address on that line) is dropped. Replaces the table
    /// (counters start from zero). Counted: every IPv4 packet, those with a LAN source, those
    /// refused; the chain hooks before the fault tables, so it also counts what a cut drops.
    pub(crate) fn install_bcp38(&self, i: usize, leases: &[Ipv4Addr]) -> Result<()> {
        ensure!(
            !leases.is_empty(),
            "isp{i} needs at least one leased address"
        );
        let list = leases
            .iter()
            .map(Ipv4Addr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.nft(
            &isp(i),
            &replace_table(
                BCP38,
                &format!(
                    "counter lan_src {{}}\n\
                     counter all_ip {{}}\n\
                     counter refused {{}}\n\
                     chain in {{ type filter hook ingress device up0 priority -500;\n\
                       meta protocol ip counter name all_ip\n\
                       meta protocol ip ip saddr {LAN_NET} counter name lan_src\n\
                       meta protocol ip ip saddr != {{ {list} }} counter name refused drop\n }}"
                ),
            ),
        )
        .with_context(|| format!("BCP 38 filter in isp{i}"))?;
        self.state.lock().unwrap().leases[i] = leases.to_vec();
        Ok(())
    }

    /// The addresses isp`i` accepts as sources from the router become `leases` (what a DHCP
    /// server hands out: the ISP knows its customer's address), counters from zero. Also
    /// re-attaches the filter to a re-created `up0`.
    pub fn isp_lease(&self, i: usize, leases: &[Ipv4Addr]) -> Result<()> {
        self.install_bcp38(i, leases)
    }

    /// Starts the counts of [`lan_source_packets`](Self::lan_source_packets) and
    /// [`refused_sources`](Self::refused_sources) in isp`i` afresh (the BCP 38 filter counts
    /// from the lab's start otherwise).
    pub fn watch_lan_sources(&self, i: usize) -> Result<()> {
        let leases = self.state.lock().unwrap().leases[i].clone();
        self.install_bcp38(i, &leases)
    }

    /// `(lan_source_packets, all_ipv4_packets)` that arrived on isp`i`'s `up0` (un-NATed
    /// leaks among all), since the lab started or the last
    /// [`watch_lan_sources`](Self::watch_lan_sources) / [`isp_lease`](Self::isp_lease).
    pub fn lan_source_packets(&self, i: usize) -> Result<(u64, u64)> {
        let node = isp(i);
        let lan = self.nft_counter(&node, "netdev", BCP38, "lan_src")?.0;
        let all = self.nft_counter(&node, "netdev", BCP38, "all_ip")?.0;
        Ok((lan, all))
    }

    /// IPv4 packets isp`i` refused because their source was not the router's address on the
    /// line (LAN sources, an old address, anything spoofed), counted like
    /// [`lan_source_packets`](Self::lan_source_packets).
    pub fn refused_sources(&self, i: usize) -> Result<u64> {
        Ok(self.nft_counter(&isp(i), "netdev", BCP38, "refused")?.0)
    }

    /// Counts, in isp`i`, IPv4 packets arriving from the router on `up0` that match the nft
    /// expression `matches` (e.g. `ip daddr 198.19.251.0/24`), before any filter (BCP 38,
    /// faults); table `netdev pccm_<name>`, read with [`isp_matched`](Self::isp_matched).
    pub fn watch_isp(&self, i: usize, name: &str, matches: &str) -> Result<()> {
        self.nft(
            &isp(i),
            &replace_table(
                &format!("pccm_{name}"),
                &format!(
                    "counter c {{}}\n\
                     chain in {{ type filter hook ingress device up0 priority -600;\n\
                       meta protocol ip {matches} counter name c\n }}"
                ),
            ),
        )
        .with_context(|| format!("counter {name} in isp{i}"))
    }

    /// Packets counted by [`watch_isp`](Self::watch_isp)`(i, name, …)` so far.
    pub fn isp_matched(&self, i: usize, name: &str) -> Result<u64> {
        Ok(self
            .nft_counter(&isp(i), "netdev", &format!("pccm_{name}"), "c")?
            .0)
    }

    /// The interface the kernel of `node` routes `dst` through (`ip route get`), e.g. `"wan1"`.
    pub fn route_dev(&self, node: &str, dst: Ipv4Addr) -> Result<String> {
        let out = self.run(node, &["ip", "-j", "route", "get", &dst.to_string()])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j route get")?;
        v[0]["dev"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no dev in `ip route get {dst}`: {out}"))
    }

    /// Default routes of the router's main table, in the kernel's order.
    pub fn router_default_routes(&self) -> Result<Vec<DefaultRoute>> {
        let out = self.run("router", &["ip", "-j", "-d", "route", "show", "default"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("ip -j route")?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                DefaultRoute {
                    dev: text("dev"),
                    gateway: text("gateway"),
                    metric: r["metric"].as_u64().unwrap_or(0),
                    protocol: text("protocol"),
                    scope: text("scope"),
                    flags: r["flags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|f| f.as_str().map(str::to_owned))
                        .collect(),
                }
            })
            .collect())
    }
}

/// A default route as `ip -d route` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DefaultRoute {
    pub dev: String,
    pub gateway: String,
    /// 0 when `ip` shows none.
    pub metric: u64,
    pub protocol: String,
    pub scope: String,
    pub flags: Vec<String>,
}

/// Now on `CLOCK_MONOTONIC` in seconds: the clock Python's `time.monotonic()` reads, so reply
/// times logged by [`UdpFlows`] compare with it.
pub fn mono_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Polls `probe` every `every` until it returns `Some`, or fails after `timeout` with the last
/// error or "not yet" description from `what`.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let last_err = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if start.elapsed() >= timeout {
            match last_err {
                Some(e) => bail!("{what}: not within {timeout:?}: last error: {e:#}"),
                None => bail!("{what}: not within {timeout:?}"),
            }
        }
        std::thread::sleep(every);
    }
}

/// Waits until `cond` holds for a scrape of pcc-ctl's metrics (polled every 20 ms); returns
/// that scrape and the [`mono_now`] time it was taken.
pub fn wait_metrics(
    pcc: &PccHandle,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Metrics) -> bool,
) -> Result<(Metrics, f64)> {
    let mut last = None;
    let r = wait_until(what, timeout, Duration::from_millis(20), || {
        let m = pcc.metrics()?;
        let t = mono_now();
        let ok = cond(&m);
        last = Some(m.clone());
        Ok(ok.then_some((m, t)))
    });
    r.map_err(|e| match last {
        Some(m) => e.context(format!("last scrape: {}", health_summary(&m))),
        None => e,
    })
}

/// Waits until `pcc_wan_up{wan}` is `up` (1.0 or 0.0); returns the time of that scrape.
pub fn wait_wan_state(pcc: &PccHandle, wan: &str, up: bool, timeout: Duration) -> Result<f64> {
    let want = if up { 1.0 } else { 0.0 };
    wait_metrics(
        pcc,
        &format!("pcc_wan_up{{wan=\"{wan}\"}} == {want}"),
        timeout,
        |m| m.get("pcc_wan_up", &[("wan", wan)]) == Some(want),
    )
    .map(|(_, t)| t)
}

/// Waits until every WAN in `wans` reports `pcc_wan_up` 1 (pcc-ctl may start a WAN only
/// after its first answered probes).
pub fn wait_wans_up(pcc: &PccHandle, wans: &[&str], timeout: Duration) -> Result<()> {
    wait_metrics(
        pcc,
        &format!("pcc_wan_up 1 for {}", wans.join(",")),
        timeout,
        |m| {
            wans.iter()
                .all(|w| m.get("pcc_wan_up", &[("wan", w)]) == Some(1.0))
        },
    )
    .map(drop)
}

/// Waits until the router's kernel routes `dst` through `dev` (`ip route get`), polling every
/// 50 ms.
pub fn wait_route(lab: &Lab, dst: Ipv4Addr, dev: &str, timeout: Duration) -> Result<()> {
    let mut last = String::new();
    wait_until(
        &format!("`ip route get {dst}` in the router says dev {dev}"),
        timeout,
        Duration::from_millis(50),
        || {
            last = lab.route_dev("router", dst)?;
            Ok((last == dev).then_some(()))
        },
    )
    .with_context(|| {
        format!(
            "last answer: dev {last}; default routes: {:?}",
            lab.router_default_routes().unwrap_or_default()
        )
    })
}

/// One line of the health metrics per WAN, for messages.
pub fn health_summary(m: &Metrics) -> String {
    WAN_NAMES
        .iter()
        .map(|w| {
            format!(
                "{w}: up={} rtt={:.2}ms loss={:.3} changes={} tx={}",
                m.wan("pcc_wan_up", w),
                1e3 * m.wan("pcc_wan_rtt_seconds", w),
                m.wan("pcc_wan_loss_ratio", w),
                m.wan("pcc_wan_state_changes_total", w),
                m.wan("pcc_wan_tx_packets_total", w),
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
        + &format!(
            "; drops no_wan_up={}",
            m.get("pcc_drops_total", &[("reason", "no_wan_up")])
                .unwrap_or(0.0)
        )
}

const UDP_FLOWS_PY: &str = r#"
import selectors, signal, socket, sys, time
# One UDP socket (flow) per destination; every `interval` each sends one request. Prints
#   S <flow> <local port> <dst>             once per flow
#   R <flow> <monotonic time> <ip:port>     per reply (what the echo server saw as our address)
#   E <requests per flow> <monotonic time>  at the end (after `duration` or SIGTERM)
dsts, port = sys.argv[1].split(","), int(sys.argv[2])
interval, duration = float(sys.argv[3]), float(sys.argv[4])
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
sel = selectors.DefaultSelector()
socks = []
for i, d in enumerate(dsts):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, i)
    socks.append(s)
    print(f"S {i} {s.getsockname()[1]} {d}")
sys.stdout.flush()
start = time.monotonic()
end, nxt, seq = start + duration, start, 0
while not stop:
    now = time.monotonic()
    if now >= end:
        break
    if now >= nxt:
        for i, s in enumerate(socks):
            try:
                s.sendto(f"flow {i} {seq}".encode(), (dsts[i], port))
            except OSError:
                pass
        seq += 1
        nxt += interval
        if nxt < now:
            nxt = now + interval
    wrote = False
    for key, _ in sel.select(timeout=max(0.0, min(nxt, end) - time.monotonic())):
        while True:
            try:
                data, peer = key.fileobj.recvfrom(65535)
            except OSError:
                break
            print(f"R {key.data} {time.monotonic():.6f} {data.decode(errors='replace')}")
            wrote = True
    if wrote:
        sys.stdout.flush()
print(f"E {seq} {time.monotonic():.6f}", flush=True)
"#;

/// Long-running UDP flows from LAN clients to the lab's echo server: each flow is one socket
/// sending a request every `interval`, and every reply is logged with its arrival time and the
/// address the server saw (i.e. which WAN carried it). Processes end by themselves after the
/// duration given to [`Lab::start_udp_flows`] and are killed when this is dropped.
pub struct UdpFlows {
    specs: Vec<(String, Ipv4Addr)>,
    /// Per client: (process, flow indices of `specs` in script order).
    procs: Vec<(LabProcess, Vec<usize>)>,
    deadline: Instant,
}

/// One reply of a UDP flow.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowReply {
    /// Arrival time ([`mono_now`] clock).
    pub t: f64,
    /// `ip:port` the echo server saw.
    pub seen: String,
    /// Which WAN that address is, if any.
    pub wan: Option<usize>,
}

/// What one flow saw so far.
#[derive(Clone, Debug)]
pub struct FlowRecord {
    pub client: String,
    pub dst: Ipv4Addr,
    /// Local (LAN-side) source port, 0 until the script reported it.
    pub local_port: u16,
    pub replies: Vec<FlowReply>,
    /// Requests sent (known at the end only).
    pub sent: Option<u64>,
}

impl FlowRecord {
    /// `client -> dst` for messages.
    pub fn name(&self) -> String {
        format!("{}:{} -> {}", self.client, self.local_port, self.dst)
    }

    /// WAN of the last reply at or before `t`.
    pub fn wan_at(&self, t: f64) -> Option<usize> {
        self.replies
            .iter()
            .rev()
            .find(|r| r.t <= t)
            .and_then(|r| r.wan)
    }

    /// Replies that arrived in `[from, to]`.
    pub fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &FlowReply> {
        self.replies
            .iter()
            .filter(move |r| r.t >= from && r.t <= to)
    }

    /// The longest time in `[from, to]` without a reply (the window's ends count as
    /// boundaries, so a flow that stopped answering has a gap up to `to`).
    pub fn longest_gap(&self, from: f64, to: f64) -> f64 {
        let mut prev = from;
        let mut gap: f64 = 0.0;
        for r in self.between(from, to) {
            gap = gap.max(r.t - prev);
            prev = r.t;
        }
        gap.max(to - prev)
    }

    /// First reply after `t`, if any.
    pub fn first_after(&self, t: f64) -> Option<&FlowReply> {
        self.replies.iter().find(|r| r.t > t)
    }
}

/// All flows at one moment.
#[derive(Clone, Debug)]
pub struct FlowsReport {
    pub flows: Vec<FlowRecord>,
    /// Whether every flow's script has ended.
    pub finished: bool,
}

impl FlowsReport {
    /// Indices of the flows whose last reply at or before `t` came over WAN `wan`.
    pub fn on_wan_at(&self, wan: usize, t: f64) -> Vec<usize> {
        (0..self.flows.len())
            .filter(|&i| self.flows[i].wan_at(t) == Some(wan))
            .collect()
    }

    /// `flow: wan0 x12, wan1 x40` lines, for messages.
    pub fn describe(&self) -> String {
        self.flows
            .iter()
            .map(|f| {
                let mut per = [0usize; 3];
                for r in &f.replies {
                    per[r.wan.unwrap_or(2)] += 1;
                }
                format!(
                    "{}: {} replies (wan0 {}, wan1 {}, other {}), sent {:?}",
                    f.name(),
                    f.replies.len(),
                    per[0],
                    per[1],
                    per[2],
                    f.sent
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Lab {
    /// Starts one UDP flow per `(client, server address)` pair (one python process per
    /// client), each sending a request to the echo server every `interval` for `duration`
    /// (at most 600 s). Starts the echo server if needed.
    pub fn start_udp_flows(
        &self,
        flows: &[(&str, Ipv4Addr)],
        interval: Duration,
        duration: Duration,
    ) -> Result<UdpFlows> {
        ensure!(!flows.is_empty(), "no flows");
        ensure!(
            duration <= Duration::from_secs(600),
            "UDP flows are bounded to 600 s, got {duration:?}"
        );
        ensure!(
            interval >= Duration::from_millis(5),
            "interval {interval:?} below 5 ms"
        );
        self.start_udp_echo()?;
        let script = self.dir().join("udp_flows.py");
        if !script.exists() {
            std::fs::write(&script, UDP_FLOWS_PY).context("writing udp_flows.py")?;
        }
        let script = script.to_string_lossy().into_owned();
        let specs: Vec<(String, Ipv4Addr)> =
            flows.iter().map(|(c, a)| ((*c).to_owned(), *a)).collect();
        let mut clients: Vec<&str> = Vec::new();
        for (c, _) in flows {
            if !clients.contains(c) {
                clients.push(c);
            }
        }
        let mut procs = Vec::new();
        for client in clients {
            let idx: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].0 == client).collect();
            let dsts = idx
                .iter()
                .map(|&i| specs[i].1.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let p = self.spawn(
                client,
                &[
                    python(),
                    "-u",
                    &script,
                    &dsts,
                    &UDP_ECHO_PORT.to_string(),
                    &format!("{:.6}", interval.as_secs_f64()),
                    &format!("{:.3}", duration.as_secs_f64()),
                ],
            )?;
            procs.push((p, idx));
        }
        Ok(UdpFlows {
            specs,
            procs,
            deadline: Instant::now() + duration,
        })
    }
}

impl UdpFlows {
    /// Waits (polling every 50 ms, at most `timeout`) until every flow in `which` has had a
    /// reply over WAN `wan` since `since` (a [`mono_now`] time).
    pub fn wait_answered_over(
        &mut self,
        what: &str,
        which: &[usize],
        wan: usize,
        since: f64,
        timeout: Duration,
    ) -> Result<()> {
        wait_until(what, timeout, Duration::from_millis(50), || {
            let s = self.snapshot();
            Ok(which
                .iter()
                .all(|&i| {
                    s.flows[i]
                        .between(since, f64::MAX)
                        .any(|r| r.wan == Some(wan))
                })
                .then_some(()))
        })
    }

    /// What every flow saw so far.
    pub fn snapshot(&mut self) -> FlowsReport {
        let mut flows: Vec<FlowRecord> = self
            .specs
            .iter()
            .map(|(c, d)| FlowRecord {
                client: c.clone(),
                dst: *d,
                local_port: 0,
                replies: Vec::new(),
                sent: None,
            })
            .collect();
        let mut finished = true;
        for (p, idx) in &mut self.procs {
            finished &= p.try_wait().is_some();
            parse_flow_output(&p.stdout_text(), idx, &mut flows);
        }
        FlowsReport { flows, finished }
    }

    /// Waits until every flow has at least `n` replies (error after `timeout`).
    pub fn wait_replies(&mut self, n: usize, timeout: Duration) -> Result<FlowsReport> {
        let mut last = None;
        let r = wait_until(
            &format!("every UDP flow answered {n} times"),
            timeout,
            Duration::from_millis(50),
            || {
                let s = self.snapshot();
                let ok = s.flows.iter().all(|f| f.replies.len() >= n);
                last = Some(s.clone());
                Ok(ok.then_some(s))
            },
        );
        r.map_err(|e| match last {
            Some(s) => e.context(s.describe()),
            None => e,
        })
    }

    /// Tells every flow to stop now (SIGTERM; each prints its summary), waits for them (at
    /// most 5 s) and returns the final report.
    pub fn stop(mut self) -> FlowsReport {
        for (p, _) in &mut self.procs {
            p.signal(libc::SIGTERM);
        }
        self.finish(Duration::from_secs(5))
    }

    /// Waits until the flows end by themselves (at most their duration plus 10 s) and returns
    /// the final report.
    pub fn wait(self) -> FlowsReport {
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.finish(left + Duration::from_secs(10))
    }

    fn finish(mut self, timeout: Duration) -> FlowsReport {
        let deadline = Instant::now() + timeout;
        for (p, _) in &mut self.procs {
            let left = deadline.saturating_duration_since(Instant::now());
            if p.wait_timeout(left).is_none() {
                p.kill();
            }
        }
        let mut r = self.snapshot();
        r.finished = true;
        r
    }
}

fn parse_flow_output(text: &str, idx: &[usize], flows: &mut [FlowRecord]) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let flow = |s: &str| s.parse::<usize>().ok().and_then(|k| idx.get(k).copied());
        match f.as_slice() {
            ["S", k, port, _dst] => {
                if let Some(i) = flow(k) {
                    flows[i].local_port = port.parse().unwrap_or(0);
                }
            }
            ["R", k, t, seen] => {
                if let (Some(i), Ok(t)) = (flow(k), t.parse::<f64>()) {
                    let wan = seen
                        .split(':')
                        .next()
                        .and_then(|a| a.parse().ok())
                        .and_then(wan_of_addr);
                    flows[i].replies.push(FlowReply {
                        t,
                        seen: (*seen).to_owned(),
                        wan,
                    });
                }
            }
            ["E", n, _t] => {
                for &i in idx {
                    flows[i].sent = n.parse().ok();
                }
            }
            _ => {}
        }
    }
}

/// A lab ready for a failover: pcc-ctl running with `pcc_args`, both WANs up, and UDP flows
/// every 50 ms from c1 and c2 to four servers each, every flow answered and at least one of
/// them leaving by wan0.
pub struct FlowBed {
    // Dropped in this order: the flows, pcc-ctl, the lab.
    pub flows: UdpFlows,
    pub pcc: PccHandle,
    pub lab: Lab,
    /// The flows that were on wan0 once all had answered.
    pub on0: Vec<usize>,
}

impl FlowBed {
    /// Builds the lab and starts pcc-ctl and the flows (which end after `duration`).
    pub fn start(pcc_args: &[&str], duration: Duration) -> Result<Self> {
        let lab = Lab::builder()
            .clients(2)
            .servers(8)
            .build()
            .context("building the lab")?;
        lab.start_udp_echo().context("UDP echo server")?;
        let pcc = lab.start_pcc(pcc_args).context("starting pcc-ctl")?;
        wait_wans_up(&pcc, &WAN_NAMES, Duration::from_secs(10))
            .context("both WANs up after start")?;
        let pairs = flow_pairs(&lab, 2, 4);
        let mut flows =
            lab.start_udp_flows(&as_refs(&pairs), Duration::from_millis(50), duration)?;
        let warm = flows.wait_replies(5, Duration::from_secs(10))?;
        let on0 = warm.on_wan_at(0, mono_now());
        ensure!(!on0.is_empty(), "no flow on wan0:\n{}", warm.describe());
        Ok(Self {
            flows,
            pcc,
            lab,
            on0,
        })
    }

    /// Waits until every flow that was on wan0 had a reply over wan1 since `since`.
    pub fn wait_moved_to_wan1(&mut self, since: f64, timeout: Duration) -> Result<()> {
        let on0 = self.on0.clone();
        self.flows
            .wait_answered_over(
                "every wan0 flow answered over wan1",
                &on0,
                1,
                since,
                timeout,
            )
            .with_context(|| self.flows.snapshot().describe())
    }
}

/// `(client, server)` pairs: `per_client` distinct server addresses for each of the lab's
/// first `clients` clients (server addresses are not shared between clients).
pub fn flow_pairs(lab: &Lab, clients: usize, per_client: usize) -> Vec<(String, Ipv4Addr)> {
    let mut v = Vec::new();
    let mut s = 0;
    for c in lab.client_names().into_iter().take(clients) {
        for _ in 0..per_client {
            v.push((c.clone(), lab.server_addr(s % lab.server_count())));
            s += 1;
        }
    }
    v
}

/// Borrowed view of [`flow_pairs`] for [`Lab::start_udp_flows`].
pub fn as_refs(pairs: &[(String, Ipv4Addr)]) -> Vec<(&str, Ipv4Addr)> {
    pairs.iter().map(|(c, a)| (c.as_str(), *a)).collect()
}

/// Median of a non-empty list (mean of the middle two for an even count).
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(times: &[(f64, Option<usize>)]) -> FlowRecord {
        FlowRecord {
            client: "c1".into(),
            dst: Ipv4Addr::new(203, 0, 113, 10),
            local_port: 5000,
            replies: times
                .iter()
                .map(|&(t, wan)| FlowReply {
                    t,
                    seen: String::new(),
                    wan,
                })
                .collect(),
            sent: None,
        }
    }

    #[test]
    fn gaps_and_wans() {
        let f = rec(&[
            (1.0, Some(0)),
            (1.05, Some(0)),
            (1.1, Some(0)),
            (1.9, Some(1)),
            (1.95, Some(1)),
        ]);
        assert!((f.longest_gap(0.95, 2.0) - 0.8).abs() < 1e-9);
        // The window's end counts: a flow that stops answering has a growing gap.
        assert!((f.longest_gap(0.95, 3.0) - 1.05).abs() < 1e-9);
        assert_eq!(f.wan_at(1.5), Some(0));
        assert_eq!(f.wan_at(2.5), Some(1));
        assert_eq!(f.wan_at(0.5), None);
        assert_eq!(f.first_after(1.1).map(|r| r.t), Some(1.9));
        assert_eq!(rec(&[]).longest_gap(1.0, 2.0), 1.0);
    }

    #[test]
    fn parses_script_output() {
        let mut flows = vec![rec(&[]), rec(&[]), rec(&[])];
        for f in &mut flows {
            f.replies.clear();
        }
        let text = "S 0 40000 203.0.113.11\nS 1 40001 203.0.113.12\n\
                    R 1 12.500000 198.18.2.2:40001\nR 0 12.6 198.18.1.2:40000\ngarbage\nE 7 13.0\n";
        parse_flow_output(text, &[2, 0], &mut flows);
        assert_eq!(flows[2].local_port, 40000);
        assert_eq!(flows[0].local_port, 40001);
        assert_eq!(flows[0].replies[0].wan, Some(1));
        assert_eq!(flows[2].replies[0].wan, Some(0));
        assert_eq!(flows[2].sent, Some(7));
        assert!(flows[1].replies.is_empty());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }
}
