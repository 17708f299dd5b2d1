//! The command line (clap) and nothing else: `config` turns `up`'s arguments into a checked
//! `Config`, `main` hands the other subcommands' values to `commands`.
//!
//! Over 500 lines because each flag's help text sits on its `#[arg]`: that text is what
//! `pcc-ctl up --help` prints, the reference a router's admin reads. Parsers and their tests
//! follow.
use std::net::{Ipv4Addr, SocketAddr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use pcc_common::{
    Classifier, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_HOST, Method,
    conntrack::Timeouts, health::ProbeParams,
};

use crate::balance::failover;

#[derive(Parser, Debug)]
#[command(
    name = "pcc-ctl",
    version,
    about = "Per-connection multi-WAN load balancing with an XDP dataplane"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Attach the dataplane and balance the LAN's connections over the WANs until SIGINT/SIGTERM.
    Up(Box<UpArgs>),
    /// Show each WAN of a running `pcc-ctl up`: state, gateway, weight, flows, throughput, RTT, jitter, loss.
    Status(StatusArgs),
    /// List the connections a running `pcc-ctl up` tracks.
    Flows(FlowsArgs),
    /// Show the WANs' quota usage in this billing cycle, or set it (to match the ISP's meter).
    Quota(QuotaArgs),
    /// Remove what a `pcc-ctl up` that did not exit cleanly left running (pinned programs and
    /// maps, the forwarding guard, demoted routes); its connections end.
    Down(DownArgs),
}

#[derive(Args, Debug)]
pub struct QuotaArgs {
    /// The first LAN interface of the `pcc-ctl up` (it names the usage file).
    #[arg(long, value_name = "IFACE")]
    pub lan: String,
    /// Where `pcc-ctl up` keeps its usage (its `--state-dir`).
    #[arg(long, default_value = "/var/lib/pcc", value_name = "DIR")]
    pub state_dir: std::path::PathBuf,
    /// Set a WAN's usage, e.g. `eth0=350GB` (the running controller applies it).
    #[arg(long, value_delimiter = ',', value_parser = parse_set, value_name = "IFACE=SIZE,...")]
    pub set: Vec<(String, String)>,
}

fn parse_set(s: &str) -> Result<(String, String), String> {
    let (iface, size) = split_pair(s)?;
    Ok((iface.to_string(), size.to_string()))
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The LAN interfaces of the `pcc-ctl up` to remove (its first LAN names its state).
    #[arg(long, value_delimiter = ',', required = true, value_name = "IFACE,...")]
    pub lan: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The running controller's `--metrics` address (its API shares the listener).
    #[arg(long, default_value = "127.0.0.1:9847", value_name = "ADDR:PORT")]
    pub api: SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// The running controller's `--metrics` address (its API shares the listener).
    #[arg(long, default_value = "127.0.0.1:9847", value_name = "ADDR:PORT")]
    pub api: SocketAddr,
    /// Only connections through this WAN.
    #[arg(long, value_name = "IFACE")]
    pub wan: Option<String>,
    /// Only connections of this LAN host.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<Ipv4Addr>,
    /// At most this many connections.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// The driver's own XDP hook: the fast path. Refused if the driver has none.
    Native,
    /// Generic (skb) XDP: works on any interface, much slower; use only when native fails.
    Generic,
}

/// RFC 4787 filtering behaviour (`--nat-filtering`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NatFilteringArg {
    AddressAndPortDependent,
    EndpointIndependent,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// WAN (internet-facing) interfaces, comma-separated, at most 8.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IFACE,...")]
    pub wan: Vec<String>,
    /// Failover-only WANs, used while every `--wan` WAN is down (at most 8 WANs in all).
    #[arg(long, value_delimiter = ',', value_name = "IFACE,...")]
    pub backup: Vec<String>,
    /// LAN interfaces, comma-separated, at most 4.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IFACE,...")]
    pub lan: Vec<String>,
    /// Share of new connections per WAN, e.g. `eth0=2,eth1=1` (default: equal).
    #[arg(long, value_delimiter = ',', value_parser = parse_weight, value_name = "IFACE=N,...")]
    pub weight: Vec<(String, u32)>,
    /// How new connections choose their WAN: pcc (classifier hash), nth (in turn), ecmp (the
    /// kernel's layer-4 multipath hash), least-loaded (most spare capacity; needs --line-rate).
    #[arg(long, value_parser = parse_method, default_value = "pcc")]
    pub method: Method,
    /// Policy file (TOML): which WANs each source subnet or device may use, with weights and
    /// a fallback; see the README's "Per-subnet policies" for a full example.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Where quota usage is kept across restarts and reboots.
    #[arg(long, default_value = "/var/lib/pcc", value_name = "DIR")]
    pub state_dir: std::path::PathBuf,
    /// Each WAN's line rate in Mbit/s, e.g. `eth0=20,eth1=10` (for --method least-loaded).
    #[arg(long, value_delimiter = ',', value_parser = parse_line_rate, value_name = "IFACE=MBIT,...")]
    pub line_rate: Vec<(String, u32)>,
    /// Which fields choose a connection's WAN (MikroTik PCC's classifiers).
    #[arg(long, value_parser = parse_classifier, default_value = "both-addresses")]
    pub classifier: Classifier,
    /// A WAN's gateway when it has no default route, e.g. `eth0=203.0.113.1`.
    #[arg(long, value_delimiter = ',', value_parser = parse_gateway, value_name = "IFACE=ADDR,...")]
    pub gateway: Vec<(String, Ipv4Addr)>,
    /// Prometheus endpoint (`/metrics`); loopback by default, expose it with care.
    #[arg(long, default_value = "127.0.0.1:9847", value_name = "ADDR:PORT")]
    pub metrics: SocketAddr,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value = "native")]
    pub xdp_mode: XdpModeArg,
    /// Do not install the nftables table that keeps kernel-forwarded LAN traffic from leaving
    /// a WAN un-NATed and unsolicited WAN traffic out of the LAN (with your own firewall).
    #[arg(long)]
    pub no_forward_guard: bool,
    /// Conntrack capacity in connections; beyond it new connections are dropped and counted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_connections: u32,
    /// Connections one LAN host may hold at once: a busy laptop holds a few hundred, a
    /// scanning host would fill the table. Beyond it the host's new connections are refused
    /// (ICMP administratively prohibited) and counted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS_PER_HOST, value_parser = clap::value_parser!(u32).range(1..=16_777_216), value_name = "N")]
    pub max_connections_per_host: u32,
    /// Which unsolicited packets reach a LAN host through its mapping (RFC 4787):
    /// `address-and-port-dependent` only lets replies from where the host sent in;
    /// `endpoint-independent` lets anyone reach a live mapping (full cone, for consoles and
    /// peer-to-peer apps).
    #[arg(long, value_enum, default_value = "address-and-port-dependent")]
    pub nat_filtering: NatFilteringArg,
    /// Source NAT port range, the hosts' ephemeral ports included. The router's own sockets
    /// keep their tuples: the TC egress hook on each WAN records them.
    #[arg(long, value_parser = parse_port_range, default_value = "1024-65535", value_name = "MIN-MAX")]
    pub nat_ports: (u16, u16),
    /// Seed of the classifier hash (same seed, same WAN for the same connection).
    #[arg(long, default_value_t = 0x5eed_0001)]
    pub hash_seed: u32,
    /// Seconds a WAN may stay down before pcc resets its TCP connections towards the LAN hosts
    /// (so applications reconnect over a live WAN at once); until then they stay on it and
    /// survive its return. Longer than the blips to survive (pcc needs ~0.6 s to see a dead
    /// line and 1 s of answers to take it back) and than TCP's 1 s initial retransmission
    /// timeout plus its first doubled one; short enough that apps reconnect within seconds.
    #[arg(long, default_value_t = failover::DEFAULT_GRACE_SECS, value_parser = clap::value_parser!(u64).range(0..=3600), value_name = "SECONDS")]
    pub failover_grace: u64,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    #[command(flatten)]
    pub health: HealthArgs,
}

/// Gateway health checking (see README, "Health checking", for why these defaults).
#[derive(Args, Debug)]
pub struct HealthArgs {
    /// ICMP probe targets of a WAN, e.g. `eth0=192.0.2.1,192.0.2.2` (repeatable). Default: the
    /// WAN's gateway. Targets beyond the modem see "modem alive, internet dead".
    #[arg(long, value_parser = parse_probe, value_name = "IFACE=ADDR[,ADDR...]")]
    pub probe: Vec<(String, Vec<Ipv4Addr>)>,
    /// Milliseconds between probes to each target.
    #[arg(long, default_value_t = ProbeParams::default().interval_ms, value_parser = clap::value_parser!(u64).range(10..=10_000), value_name = "MS")]
    pub probe_interval: u64,
    /// A target is down after this many probes in a row went unanswered.
    #[arg(long, default_value_t = ProbeParams::default().down_after, value_parser = clap::value_parser!(u32).range(2..=1000), value_name = "N")]
    pub down_after: u32,
    /// A down target is up again after this many answered probes in a row.
    #[arg(long, default_value_t = ProbeParams::default().up_after, value_parser = clap::value_parser!(u32).range(1..=10_000), value_name = "N")]
    pub up_after: u32,
    /// A reply later than this counts as lost (and a probe this old without one breaks the run
    /// of answers a down target needs to come back).
    #[arg(long, default_value_t = ProbeParams::default().reply_timeout_ms, value_parser = clap::value_parser!(u64).range(10..=60_000), value_name = "MS")]
    pub probe_timeout: u64,
    /// How many of a WAN's targets must be up for the WAN to be up.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16), value_name = "N")]
    pub probe_quorum: u32,
    /// Seconds over which loss, RTT and jitter are measured.
    #[arg(long, default_value_t = ProbeParams::default().window_ms / 1000, value_parser = clap::value_parser!(u64).range(1..=3600), value_name = "SECONDS")]
    pub loss_window: u64,
    /// Take a WAN out when its probe loss over the window exceeds this (it returns below 80 % of it).
    #[arg(long, value_parser = parse_percent, value_name = "PERCENT")]
    pub max_loss: Option<f64>,
    /// Take a WAN out when its smoothed RTT exceeds this (it returns below 80 % of it).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000), value_name = "MS")]
    pub max_rtt: Option<u64>,
}

impl HealthArgs {
    pub fn params(&self) -> ProbeParams {
        ProbeParams {
            interval_ms: self.probe_interval,
            down_after: self.down_after,
            up_after: self.up_after,
            window_ms: self.loss_window * 1000,
            reply_timeout_ms: self.probe_timeout,
            max_loss: self.max_loss.map(|p| p / 100.0),
            max_rtt_ms: self.max_rtt.map(|ms| ms as f64),
        }
    }
}

fn parse_probe(s: &str) -> Result<(String, Vec<Ipv4Addr>), String> {
    let (iface, addrs) = split_pair(s)?;
    let addrs = addrs
        .split(',')
        .map(|a| {
            a.parse()
                .map_err(|_| format!("probe target of {iface} must be an IPv4 address, got `{a}`"))
        })
        .collect::<Result<Vec<Ipv4Addr>, String>>()?;
    Ok((iface.to_string(), addrs))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("expected a percentage, got `{s}`"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("percentage must be 0..=100, got {v}"));
    }
    Ok(v)
}

/// Idle timeouts in seconds (defaults: the RFC 5382/4787/5508 floors for NATs, Linux's 5 days for
/// established TCP, a short closed-TCP grace).
#[derive(Args, Debug)]
pub struct TimeoutArgs {
    /// Established TCP.
    #[arg(long, default_value_t = Timeouts::default().tcp_established, value_name = "SECONDS")]
    pub tcp_timeout: u32,
    /// TCP not yet answered, or half-closed.
    #[arg(long, default_value_t = Timeouts::default().tcp_opening, value_name = "SECONDS")]
    pub tcp_opening_timeout: u32,
    /// TCP after an in-window RST, or FIN both ways.
    #[arg(long, default_value_t = Timeouts::default().tcp_close, value_name = "SECONDS")]
    pub tcp_close_timeout: u32,
    /// UDP seen one way only.
    #[arg(long, default_value_t = Timeouts::default().udp, value_name = "SECONDS")]
    pub udp_timeout: u32,
    /// UDP with replies.
    #[arg(long, default_value_t = Timeouts::default().udp_stream, value_name = "SECONDS")]
    pub udp_stream_timeout: u32,
    /// ICMP echo.
    #[arg(long, default_value_t = Timeouts::default().icmp, value_name = "SECONDS")]
    pub icmp_timeout: u32,
}

impl TimeoutArgs {
    pub fn timeouts(&self) -> Timeouts {
        let TimeoutArgs {
            tcp_timeout,
            tcp_opening_timeout,
            tcp_close_timeout,
            udp_timeout,
            udp_stream_timeout,
            icmp_timeout,
        } = *self;
        Timeouts {
            tcp_established: tcp_timeout,
            tcp_opening: tcp_opening_timeout,
            tcp_close: tcp_close_timeout,
            udp: udp_timeout,
            udp_stream: udp_stream_timeout,
            icmp: icmp_timeout,
        }
    }
}

fn split_pair(s: &str) -> Result<(&str, &str), String> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| format!("expected IFACE=VALUE, got `{s}`"))
}

fn parse_weight(s: &str) -> Result<(String, u32), String> {
    let (iface, w) = split_pair(s)?;
    let w: u32 = w
        .parse()
        .map_err(|_| format!("weight of {iface} must be a whole number, got `{w}`"))?;
    if !(1..=1000).contains(&w) {
        return Err(format!("weight of {iface} must be 1..=1000, got {w}"));
    }
    Ok((iface.to_string(), w))
}

fn parse_line_rate(s: &str) -> Result<(String, u32), String> {
    let (iface, r) = split_pair(s)?;
    let r: u32 = r
        .parse()
        .map_err(|_| format!("line rate of {iface} must be whole Mbit/s, got `{r}`"))?;
    if !(1..=400_000).contains(&r) {
        return Err(format!(
            "line rate of {iface} must be 1..=400000 Mbit/s, got {r}"
        ));
    }
    Ok((iface.to_string(), r))
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        format!("unknown method `{s}` (one of: {})", names.join(", "))
    })
}

fn parse_gateway(s: &str) -> Result<(String, Ipv4Addr), String> {
    let (iface, a) = split_pair(s)?;
    let a = a
        .parse()
        .map_err(|_| format!("gateway of {iface} must be an IPv4 address, got `{a}`"))?;
    Ok((iface.to_string(), a))
}

fn parse_classifier(s: &str) -> Result<Classifier, String> {
    Classifier::from_name(s).ok_or_else(|| {
        let names: Vec<_> = Classifier::ALL.iter().map(|c| c.name()).collect();
        format!("unknown classifier `{s}` (one of: {})", names.join(", "))
    })
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("expected MIN-MAX, got `{s}`"))?;
    let lo: u16 = lo.parse().map_err(|_| format!("bad port `{lo}`"))?;
    let hi: u16 = hi.parse().map_err(|_| format!("bad port `{hi}`"))?;
    if lo == 0 || lo > hi {
        return Err(format!(
            "port range must satisfy 1 <= MIN <= MAX, got {lo}-{hi}"
        ));
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(args: &[&str]) -> Result<UpArgs, clap::Error> {
        let mut all = vec!["pcc-ctl", "up"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map(|c| match c.command {
            Command::Up(u) => *u,
            other => panic!("not up: {other:?}"),
        })
    }

    #[test]
    fn parses_a_full_command_line() {
        let u = up(&[
            "--wan",
            "eth0,eth1",
            "--lan",
            "eth2",
            "--weight",
            "eth0=2,eth1=1",
            "--classifier",
            "src-address",
            "--gateway",
            "eth0=203.0.113.1",
            "--nat-ports",
            "2000-3000",
            "--udp-timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(u.wan, ["eth0", "eth1"]);
        assert_eq!(u.lan, ["eth2"]);
        assert_eq!(u.weight, [("eth0".to_string(), 2), ("eth1".to_string(), 1)]);
        assert_eq!(u.classifier, Classifier::SrcAddress);
        assert_eq!(u.method, Method::Pcc, "pcc is the default method");
        assert_eq!(
            u.gateway,
            [("eth0".to_string(), Ipv4Addr::new(203, 0, 113, 1))]
        );
        assert_eq!(u.nat_ports, (2000, 3000));
        assert_eq!(u.timeouts.timeouts().udp, 5);
        assert_eq!(u.health.params(), ProbeParams::default());
        assert_eq!(u.failover_grace, failover::DEFAULT_GRACE_SECS);
        assert_eq!(
            u.metrics.ip().to_string(),
            "127.0.0.1",
            "metrics stay on loopback by default"
        );
    }

    #[test]
    fn parses_probe_targets_and_settings() {
        let u = up(&[
            "--wan",
            "eth0,eth1",
            "--lan",
            "eth2",
            "--probe",
            "eth0=198.18.0.1,198.18.0.2",
            "--probe",
            "eth1=203.0.113.9",
            "--probe-quorum",
            "2",
            "--probe-interval",
            "100",
            "--probe-timeout",
            "500",
            "--down-after",
            "5",
            "--up-after",
            "8",
            "--loss-window",
            "30",
            "--max-loss",
            "25%",
            "--max-rtt",
            "300",
        ])
        .unwrap();
        assert_eq!(
            u.health.probe,
            [
                (
                    "eth0".to_string(),
                    vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)]
                ),
                ("eth1".to_string(), vec![Ipv4Addr::new(203, 0, 113, 9)])
            ]
        );
        assert_eq!(u.health.probe_quorum, 2);
        assert_eq!(
            u.health.params(),
            ProbeParams {
                interval_ms: 100,
                down_after: 5,
                up_after: 8,
                window_ms: 30_000,
                reply_timeout_ms: 500,
                max_loss: Some(0.25),
                max_rtt_ms: Some(300.0),
            }
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--wan", "eth0", "--lan", "eth2", "--weight", "eth0=0"][..],
            &["--wan", "eth0", "--lan", "eth2", "--weight", "eth0"],
            &[
                "--wan",
                "eth0",
                "--lan",
                "eth2",
                "--classifier",
                "round-robin",
            ],
            &[
                "--wan",
                "eth0",
                "--lan",
                "eth2",
                "--gateway",
                "eth0=999.1.1.1",
            ],
            &["--wan", "eth0", "--lan", "eth2", "--nat-ports", "3000-2000"],
            &["--wan", "eth0", "--lan", "eth2", "--max-connections", "0"],
            &["--wan", "eth0", "--lan", "eth2", "--method", "random"],
            &["--wan", "eth0", "--lan", "eth2", "--line-rate", "eth0=0"],
            &["--wan", "eth0", "--lan", "eth2", "--line-rate", "eth0=fast"],
            &["--lan", "eth2"],
        ] {
            assert!(up(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
