//! What `pcc-ctl up` runs with: the command line turned into one checked `Config` with the
//! settings of each WAN in one place. Nothing below this module sees clap.
//!
//! The `--config` file (policies and quotas) stays a path here: its subnets are checked
//! against the LAN subnets, which only the kernel knows, so it is read once the ports are
//! learned (`balance::policy::load`), as before.
use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use pcc_common::{
    Classifier, MAX_LANS, MAX_WANS, Method, NatFiltering, NatPortRange, conntrack::Timeouts,
    health::ProbeParams,
};

use crate::cli::{NatFilteringArg, UpArgs, XdpModeArg};

/// How the XDP programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// The driver's own hook.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

/// One WAN as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct WanConfig {
    pub name: String,
    /// `--weight` (1 unless given).
    pub weight: u32,
    /// `--backup`: failover-only.
    pub backup: bool,
    /// `--gateway`: fixed; otherwise learned from the WAN's default route (and followed).
    pub gateway: Option<Ipv4Addr>,
    /// `--line-rate` in bit/s (for `least-loaded`).
    pub line_rate_bps: Option<u64>,
    /// `--probe` targets; `None`: the gateway (followed when it changes).
    pub probe_targets: Option<Vec<Ipv4Addr>>,
}

/// Everything `pcc-ctl up` runs with, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// The primaries, then the backups: the index is the WAN's `wan_id`.
    pub wans: Vec<WanConfig>,
    pub lans: Vec<String>,
    pub method: Method,
    pub classifier: Classifier,
    /// `--config`: policies and quotas, read once the LAN subnets are known.
    pub policy_file: Option<PathBuf>,
    /// Where quota usage is kept.
    pub state_dir: PathBuf,
    /// The metrics and API listener.
    pub listen: SocketAddr,
    pub xdp_mode: XdpMode,
    pub forward_guard: bool,
    pub max_connections: u32,
    pub max_connections_per_host: u32,
    pub nat_filtering: NatFiltering,
    pub nat_ports: NatPortRange,
    pub hash_seed: u32,
    pub failover_grace_secs: u64,
    pub timeouts: Timeouts,
    pub probe: ProbeParams,
    /// How many of a WAN's probe targets must be up.
    pub probe_quorum: usize,
}

impl Config {
    /// Checks `pcc-ctl up`'s arguments and gathers each WAN's settings.
    pub fn from_args(args: UpArgs) -> Result<Self> {
        check(&args)?;
        let probe = args.health.params();
        let timeouts = args.timeouts.timeouts();
        let UpArgs {
            wan,
            backup,
            lan,
            weight,
            method,
            config,
            state_dir,
            line_rate,
            classifier,
            gateway,
            metrics,
            xdp_mode,
            no_forward_guard,
            max_connections,
            max_connections_per_host,
            nat_filtering,
            nat_ports,
            hash_seed,
            failover_grace,
            timeouts: _,
            health,
        } = args;

        let wans = wan
            .iter()
            .map(|n| (n, false))
            .chain(backup.iter().map(|n| (n, true)))
            .map(|(name, backup)| WanConfig {
                name: name.clone(),
                weight: setting(&weight, name).unwrap_or(1),
                backup,
                gateway: setting(&gateway, name),
                line_rate_bps: setting(&line_rate, name).map(|mbit| u64::from(mbit) * 1_000_000),
                probe_targets: health
                    .probe
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.clone()),
            })
            .collect();
        Ok(Self {
            wans,
            lans: lan,
            method,
            classifier,
            policy_file: config,
            state_dir,
            listen: metrics,
            xdp_mode: match xdp_mode {
                XdpModeArg::Native => XdpMode::Native,
                XdpModeArg::Generic => XdpMode::Generic,
            },
            forward_guard: !no_forward_guard,
            max_connections,
            max_connections_per_host,
            nat_filtering: match nat_filtering {
                NatFilteringArg::AddressAndPortDependent => NatFiltering::AddressAndPortDependent,
                NatFilteringArg::EndpointIndependent => NatFiltering::EndpointIndependent,
            },
            nat_ports: NatPortRange {
                min: nat_ports.0,
                max: nat_ports.1,
            },
            hash_seed,
            failover_grace_secs: failover_grace,
            timeouts,
            probe,
            probe_quorum: health.probe_quorum as usize,
        })
    }

    /// The WAN and LAN interface names, WANs first.
    pub fn interfaces(&self) -> Vec<String> {
        let wans = self.wans.iter().map(|w| w.name.clone());
        wans.chain(self.lans.iter().cloned()).collect()
    }

    /// The first LAN: it names the instance's pins, lock, guard and state files.
    pub fn first_lan(&self) -> &str {
        &self.lans[0]
    }

    /// The quota usage file of this instance.
    pub fn quota_file(&self) -> PathBuf {
        quota_file(&self.state_dir, self.first_lan())
    }
}

/// The value an `IFACE=VALUE` option gives `name`, if any (`check` refused names given twice).
fn setting<T: Copy>(list: &[(String, T)], name: &str) -> Option<T> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// The quota usage file of the instance whose first LAN is `lan`.
pub fn quota_file(dir: &Path, lan: &str) -> PathBuf {
    dir.join(format!("quota-{lan}.json"))
}

/// What clap cannot check alone: counts, names given twice or naming no WAN, least-loaded's
/// line rates.
fn check(args: &UpArgs) -> Result<()> {
    let wans: Vec<&String> = args.wan.iter().chain(&args.backup).collect();
    if wans.len() > MAX_WANS {
        bail!(
            "at most {MAX_WANS} WAN interfaces (with backups) are supported, got {}",
            wans.len()
        );
    }
    if args.lan.len() > MAX_LANS {
        bail!(
            "at most {MAX_LANS} LAN interfaces are supported, got {}",
            args.lan.len()
        );
    }
    let mut seen = HashSet::new();
    for name in wans.iter().copied().chain(&args.lan) {
        if !seen.insert(name) {
            if wans.contains(&name) && args.lan.contains(name) {
                bail!("interface {name} is given as both WAN and LAN");
            }
            bail!("interface {name} is given twice");
        }
    }
    let all = wans
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let named = args.weight.iter().map(|(n, _)| ("--weight", n));
    let named = named.chain(args.gateway.iter().map(|(n, _)| ("--gateway", n)));
    let named = named.chain(args.line_rate.iter().map(|(n, _)| ("--line-rate", n)));
    let mut seen = Vec::new();
    for (option, name) in named.chain(args.health.probe.iter().map(|(n, _)| ("--probe", n))) {
        if !wans.contains(&name) {
            bail!("{option} names {name}, which is not one of the WANs ({all})");
        }
        // A second value would silently win or lose: `--probe eth0=A,B` takes several.
        if seen.contains(&(option, name)) {
            bail!("{option} names {name} twice; give its values once (e.g. {option} {name}=A,B)");
        }
        seen.push((option, name));
    }
    if args.method == Method::LeastLoaded {
        let missing: Vec<&str> = wans
            .iter()
            .filter(|w| !args.line_rate.iter().any(|(n, _)| n == **w))
            .map(|w| w.as_str())
            .collect();
        if !missing.is_empty() {
            bail!(
                "--method least-loaded needs every WAN's --line-rate (missing: {})",
                missing.join(",")
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn config(args: &[&str]) -> Result<Config> {
        let mut all = vec!["pcc-ctl", "up"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)?.command {
            Command::Up(u) => Config::from_args(*u),
            other => panic!("not up: {other:?}"),
        }
    }

    #[test]
    fn gathers_each_wans_settings() {
        let c = config(&[
            "--wan",
            "eth0,eth1",
            "--backup",
            "eth3",
            "--lan",
            "eth2",
            "--weight",
            "eth1=3",
            "--gateway",
            "eth0=203.0.113.1",
            "--probe",
            "eth3=198.18.0.1",
            "--method",
            "least-loaded",
            "--line-rate",
            "eth0=20,eth1=10,eth3=5",
        ])
        .unwrap();
        let names: Vec<&str> = c.wans.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "eth3"], "primaries, then backups");
        assert_eq!(
            c.wans[0],
            WanConfig {
                name: "eth0".into(),
                weight: 1,
                backup: false,
                gateway: Some(Ipv4Addr::new(203, 0, 113, 1)),
                line_rate_bps: Some(20_000_000),
                probe_targets: None,
            }
        );
        assert_eq!((c.wans[1].weight, c.wans[1].backup), (3, false));
        assert!(c.wans[2].backup);
        assert_eq!(
            c.wans[2].probe_targets,
            Some(vec![Ipv4Addr::new(198, 18, 0, 1)])
        );
        assert!(c.forward_guard);
        assert_eq!(c.interfaces(), ["eth0", "eth1", "eth3", "eth2"]);
        assert_eq!(
            c.quota_file(),
            PathBuf::from("/var/lib/pcc/quota-eth2.json")
        );
    }

    #[test]
    fn refuses_what_clap_cannot_check() {
        for (bad, says) in [
            (&["--wan", "eth0", "--lan", "eth0"][..], "both WAN and LAN"),
            (&["--wan", "eth0,eth0", "--lan", "eth2"], "given twice"),
            (
                &["--wan", "eth0", "--lan", "eth2", "--weight", "eth9=2"],
                "not one of the WANs",
            ),
            (
                &["--wan", "eth0", "--lan", "eth2", "--method", "least-loaded"],
                "needs every WAN's --line-rate",
            ),
        ] {
            let e = config(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
