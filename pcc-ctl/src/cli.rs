//! Command line.
use std::net::{Ipv4Addr, SocketAddr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use pcc_common::{Classifier, DEFAULT_MAX_CONNECTIONS, conntrack::Timeouts};

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
    Up(UpArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    /// The driver's own XDP hook: the fast path. Refused if the driver has none.
    Native,
    /// Generic (skb) XDP: works on any interface, much slower; use only when native fails.
    Generic,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// WAN (internet-facing) interfaces, comma-separated, at most 8.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IFACE,...")]
    pub wan: Vec<String>,
    /// LAN interfaces, comma-separated, at most 4.
    #[arg(long, value_delimiter = ',', required = true, value_name = "IFACE,...")]
    pub lan: Vec<String>,
    /// Share of new connections per WAN, e.g. `eth0=2,eth1=1` (default: equal).
    #[arg(long, value_delimiter = ',', value_parser = parse_weight, value_name = "IFACE=N,...")]
    pub weight: Vec<(String, u32)>,
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
    /// Conntrack capacity in connections; beyond it new connections are dropped and counted.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(16..=16_777_216))]
    pub max_connections: u32,
    /// Source NAT port range. The router's own ephemeral range
    /// (net.ipv4.ip_local_port_range) is always left out of it.
    #[arg(long, value_parser = parse_port_range, default_value = "1024-65535", value_name = "MIN-MAX")]
    pub nat_ports: (u16, u16),
    /// Seed of the classifier hash (same seed, same WAN for the same connection).
    #[arg(long, default_value_t = 0x5eed_0001)]
    pub hash_seed: u32,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
}

/// Idle timeouts in seconds (defaults: Linux nf_conntrack's, but a shorter closed-TCP grace).
#[derive(Args, Debug)]
pub struct TimeoutArgs {
    /// Established TCP.
    #[arg(long, default_value_t = Timeouts::default().tcp_established, value_name = "SECONDS")]
    pub tcp_timeout: u64,
    /// TCP not yet answered, or half-closed.
    #[arg(long, default_value_t = Timeouts::default().tcp_opening, value_name = "SECONDS")]
    pub tcp_opening_timeout: u64,
    /// TCP after RST, or FIN both ways.
    #[arg(long, default_value_t = Timeouts::default().tcp_close, value_name = "SECONDS")]
    pub tcp_close_timeout: u64,
    /// UDP seen one way only.
    #[arg(long, default_value_t = Timeouts::default().udp, value_name = "SECONDS")]
    pub udp_timeout: u64,
    /// UDP with replies.
    #[arg(long, default_value_t = Timeouts::default().udp_stream, value_name = "SECONDS")]
    pub udp_stream_timeout: u64,
    /// ICMP echo.
    #[arg(long, default_value_t = Timeouts::default().icmp, value_name = "SECONDS")]
    pub icmp_timeout: u64,
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
            Command::Up(u) => u,
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
        assert_eq!(
            u.gateway,
            [("eth0".to_string(), Ipv4Addr::new(203, 0, 113, 1))]
        );
        assert_eq!(u.nat_ports, (2000, 3000));
        assert_eq!(u.timeouts.timeouts().udp, 5);
        assert_eq!(
            u.metrics.ip().to_string(),
            "127.0.0.1",
            "metrics stay on loopback by default"
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
            &["--lan", "eth2"],
        ] {
            assert!(up(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
