//! Each WAN's effective weight and tier, in one place: computed as a value from the configured
//! weight and tier, the quota thresholds crossed and, for `least-loaded`, the spare capacity;
//! adopted into the WAN views; and written with the WANs' health (which of them are up, so in
//! use) to the dataplane in one call, `apply`.
//!
//! Before, three places wrote `WanView.weight` (start-up, quotas, least-loaded) and the winner
//! was whichever ran last. The rules are the ones that ordering produced:
//! - the configured weight (`--weight`), and tier (`--backup`);
//! - `least-loaded`: the spare-capacity weight instead, changed only past 10 % (every change
//!   rebuilds the slot table);
//! - a WAN with a quota: its configured weight times the factor of the last threshold crossed
//!   (`weight`), or backup-only (`backup`): a quota overrides least-loaded for its WAN;
//! - health last: a WAN that is down, or a backup while a primary is up, takes no slots
//!   (`wan::weights_of`).
use anyhow::Result;
use pcc_common::{MAX_WANS, Method};

use crate::{
    balance::{
        policy::{self, Policy},
        quota::Action,
        wan::{self, WanView},
    },
    config::Config,
    kernel::maps::Maps,
};

/// What a WAN takes new connections with, before health decides whether it is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub weight: u32,
    /// Takes new connections only while no primary WAN is up.
    pub backup: bool,
}

/// What the effective weights are computed from, besides the configuration.
#[derive(Clone, Copy, Default)]
pub struct Inputs<'a> {
    /// `least-loaded` only: each WAN's (rx, tx) bit/s over the last second, by `wan_id`.
    pub rates: Option<&'a [(f64, f64)]>,
    /// The last threshold each quota'd WAN crossed, as `Meter::crossed` gives it.
    pub quotas: &'a [(u8, usize, Option<Action>)],
}

/// Each WAN's effective weight and tier (by position in `wans`, which is `wan_id` order, as
/// `config.wans`).
pub fn compute(config: &Config, wans: &[WanView], inputs: Inputs<'_>) -> Vec<Effective> {
    let spare = inputs.rates.map(|rates| spare_weights(config, wans, rates));
    wans.iter()
        .zip(&config.wans)
        .map(|(wan, configured)| {
            let i = usize::from(wan.wan_id);
            let quota = inputs.quotas.iter().find(|(id, _, _)| *id == wan.wan_id);
            let base = configured.weight;
            match (quota, spare) {
                (Some((_, _, action)), _) => {
                    let (weight, backup) = match action {
                        Some(Action::Weight(f)) => (
                            ((f64::from(base) * f).round() as u32).max(1),
                            configured.backup,
                        ),
                        Some(Action::Backup) => (base, true),
                        Some(Action::Alert) | None => (base, configured.backup),
                    };
                    Effective { weight, backup }
                }
                (None, Some(spare)) => {
                    let w = spare[i].max(1);
                    // Ignore jitter under 10 %: every change rebuilds the slot table.
                    let weight = if w.abs_diff(wan.weight) * 10 > wan.weight {
                        w
                    } else {
                        wan.weight
                    };
                    Effective {
                        weight,
                        backup: configured.backup,
                    }
                }
                (None, None) => Effective {
                    weight: base,
                    backup: configured.backup,
                },
            }
        })
        .collect()
}

/// `least-loaded`'s weights: each WAN's configured line rate minus the throughput just
/// measured, the busier direction.
fn spare_weights(config: &Config, wans: &[WanView], rates: &[(f64, f64)]) -> [u32; MAX_WANS] {
    let mut line = [0u64; MAX_WANS];
    let mut used = [0u64; MAX_WANS];
    let mut up = [false; MAX_WANS];
    for (wan, configured) in wans.iter().zip(&config.wans) {
        let i = usize::from(wan.wan_id);
        line[i] = configured.line_rate_bps.unwrap_or(0);
        let (rx, tx) = rates.get(i).copied().unwrap_or((0.0, 0.0));
        used[i] = rx.max(tx) as u64;
        up[i] = true;
    }
    pcc_common::method::spare_weights(&line, &used, &up)
}

/// Takes `effective` into the WAN views; whether a WAN's weight or tier changed. A quota'd
/// WAN's change is logged (a least-loaded one's, every few seconds, is not).
pub fn adopt(
    wans: &mut [WanView],
    effective: &[Effective],
    quotas: &[(u8, usize, Option<Action>)],
) -> bool {
    let mut changed = false;
    for (wan, e) in wans.iter_mut().zip(effective) {
        if wan.weight == e.weight && wan.backup == e.backup {
            continue;
        }
        if quotas.iter().any(|(id, _, _)| *id == wan.wan_id) {
            log::info!(
                "quota of {}: weight {}{}",
                wan.name,
                e.weight,
                if e.backup { ", backup only" } else { "" }
            );
        }
        wan.weight = e.weight;
        wan.backup = e.backup;
        changed = true;
    }
    changed
}

/// Writes the WANs (state, addresses, MACs) and the slot tables, the default one and each
/// policy's, built over the WANs in use with their effective weights.
pub fn apply(maps: &mut Maps, wans: &[WanView], policies: &[Policy], method: Method) -> Result<()> {
    wan::write_maps(maps, wans, method)?;
    policy::write_tables(maps, policies, wans, method)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{balance::wan::tests::wan, config::WanConfig};

    fn config(method: Method, weights: &[u32]) -> Config {
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(["pcc-ctl", "up", "--wan", "a", "--lan", "l"]).unwrap();
        let crate::cli::Command::Up(args) = cli.command else {
            unreachable!()
        };
        let mut c = Config::from_args(*args).unwrap();
        c.method = method;
        c.wans = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| WanConfig {
                name: format!("wan{i}"),
                weight,
                backup: false,
                gateway: None,
                line_rate_bps: Some(10_000_000),
                probe_targets: None,
            })
            .collect();
        c
    }

    fn weights(e: &[Effective]) -> Vec<(u32, bool)> {
        e.iter().map(|e| (e.weight, e.backup)).collect()
    }

    #[test]
    fn configured_weights_without_quotas_or_least_loaded() {
        let c = config(Method::Pcc, &[3, 1]);
        let wans = [wan(0, false, true), wan(1, false, true)];
        let e = compute(&c, &wans, Inputs::default());
        assert_eq!(weights(&e), [(3, false), (1, false)]);
    }

    #[test]
    fn a_quota_scales_the_configured_weight_or_demotes() {
        let c = config(Method::Pcc, &[4, 2, 5]);
        let wans = [
            wan(0, false, true),
            wan(1, false, true),
            wan(2, false, true),
        ];
        let quotas = [
            (0, 1, Some(Action::Weight(0.5))),
            (1, 2, Some(Action::Backup)),
            (2, 0, None),
        ];
        let inputs = Inputs {
            rates: None,
            quotas: &quotas,
        };
        let e = compute(&c, &wans, inputs);
        assert_eq!(weights(&e), [(2, false), (2, true), (5, false)]);
    }

    #[test]
    fn least_loaded_follows_spare_capacity_past_ten_percent_and_yields_to_a_quota() {
        let c = config(Method::LeastLoaded, &[1, 1, 1]);
        let mut wans = [
            wan(0, false, true),
            wan(1, false, true),
            wan(2, false, true),
        ];
        // wan0 idle, wan1 and wan2 half busy: wan0 gets more weight.
        let rates = [(0.0, 0.0), (5e6, 0.0), (0.0, 5e6)];
        let quotas = [(2, 0, None)];
        let inputs = Inputs {
            rates: Some(&rates),
            quotas: &quotas,
        };
        let e = compute(&c, &wans, inputs);
        assert!(e[0].weight > e[1].weight, "{e:?}");
        assert_eq!(
            e[2].weight, 1,
            "the quota'd WAN keeps its configured weight"
        );
        assert!(adopt(&mut wans, &e, &quotas));
        // The same rates again: nothing moves past 10 %, nothing changes.
        let again = compute(&c, &wans, inputs);
        assert!(!adopt(&mut wans, &again, &quotas));
    }
}
