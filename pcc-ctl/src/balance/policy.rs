//! Source-subnet policies (`pcc-ctl up --config FILE`, TOML): which WANs a subnet (or one device)
//! may use, with what weights, and what it falls back to when they are all down. Each policy
//! gets its own slot table in the dataplane (`SLOTS[id]`), found by the source address in an
//! LPM trie, so the most specific subnet wins: a device inside the guest subnet can be pinned
//! to one WAN by a /32 of its own. Hosts no policy names use the default table.
//!
//! ```toml
//! [[policy]]
//! name = "staff"
//! subnets = ["192.168.10.0/24"]
//! wans = ["eth0"]          # preferred
//! fallback = ["eth1"]      # while every preferred WAN is down; empty: drop
//! ```
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::lpm_trie::Key;
use pcc_common::{MAX_POLICIES, MAX_POLICY_SUBNETS, MAX_WANS, Method, SlotTable};
use serde::Deserialize;

use crate::{
    balance::wan::WanView,
    kernel::{maps::Maps, netlink::Ipv4Net},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    policy: Vec<PolicyConf>,
    #[serde(default)]
    quota: Vec<crate::balance::quota::QuotaConf>,
}

/// Everything `--config` holds.
#[derive(Default)]
pub struct ConfigFile {
    pub policies: Vec<Policy>,
    pub quotas: Vec<crate::balance::quota::Quota>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyConf {
    name: String,
    subnets: Vec<String>,
    wans: Vec<String>,
    #[serde(default)]
    weights: BTreeMap<String, u32>,
    #[serde(default)]
    fallback: Vec<String>,
}

/// One policy, resolved against the WANs (`wan_id`s) and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Its `SLOTS` index, 1..=MAX_POLICIES.
    pub id: u8,
    pub name: String,
    pub subnets: Vec<(Ipv4Addr, u8)>,
    /// Preferred WANs with their weights.
    pub wans: Vec<(u8, u32)>,
    /// Used (equal weights) while every preferred WAN is down.
    pub fallback: Vec<u8>,
}

fn parse_subnet(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    // Stored as the network itself, whatever host bits were written.
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

fn inside(net: &Ipv4Net, (addr, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::from(net.netmask());
    prefix >= net.prefix && u32::from(addr) & mask == u32::from(net.addr) & mask
}

/// Reads and checks a policy file: `wans` are the WAN names in `wan_id` order, `lans` the
/// LAN subnets. Every problem is one line naming the policy.
pub fn load(path: &Path, wans: &[String], lans: &[Ipv4Net]) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let file: PolicyFile = toml::from_str(&text).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or("").to_string();
        anyhow::anyhow!("config file {}: {first} ({})", path.display(), e.message())
    })?;
    Ok(ConfigFile {
        quotas: crate::balance::quota::resolve(&file.quota, wans)?,
        policies: resolve(file.policy, wans, lans)?,
    })
}

fn resolve(confs: Vec<PolicyConf>, wans: &[String], lans: &[Ipv4Net]) -> Result<Vec<Policy>> {
    ensure!(
        confs.len() <= MAX_POLICIES,
        "at most {MAX_POLICIES} policies are supported, the file has {}",
        confs.len()
    );
    let wan_id = |policy: &str, name: &str| -> Result<u8> {
        wans.iter()
            .position(|w| w == name)
            .map(|i| i as u8)
            .with_context(|| {
                format!(
                    "policy {policy} names {name}, which is not one of the WANs ({})",
                    wans.join(",")
                )
            })
    };
    let mut seen: BTreeMap<(Ipv4Addr, u8), String> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, c) in confs.into_iter().enumerate() {
        let name = c.name;
        ensure!(
            !c.wans.is_empty(),
            "policy {name} has no WAN (give `wans`; `fallback` is only for when they are down)"
        );
        ensure!(!c.subnets.is_empty(), "policy {name} names no subnet");
        let mut subnets = Vec::new();
        for s in &c.subnets {
            let net = parse_subnet(s).with_context(|| {
                format!("policy {name}: `{s}` is not an IPv4 subnet (ADDR/PREFIX)")
            })?;
            if let Some(other) = seen.insert(net, name.clone()) {
                bail!(
                    "subnet {}/{} is in policies {other} and {name}: each subnet in one policy (a narrower one may override a wider one)",
                    net.0,
                    net.1
                );
            }
            ensure!(
                lans.iter().any(|lan| inside(lan, net)),
                "policy {name}: subnet {}/{} lies in no LAN subnet",
                net.0,
                net.1
            );
            subnets.push(net);
        }
        let mut preferred = Vec::new();
        for w in &c.wans {
            let weight = c.weights.get(w).copied().unwrap_or(1);
            ensure!(
                (1..=1000).contains(&weight),
                "policy {name}: weight of {w} must be 1..=1000, got {weight}"
            );
            preferred.push((wan_id(&name, w)?, weight));
        }
        for w in c.weights.keys() {
            ensure!(
                c.wans.contains(w),
                "policy {name} weights {w}, which is not one of its wans"
            );
        }
        let fallback = c
            .fallback
            .iter()
            .map(|w| wan_id(&name, w))
            .collect::<Result<Vec<_>>>()?;
        out.push(Policy {
            id: (i + 1) as u8,
            name,
            subnets,
            wans: preferred,
            fallback,
        });
    }
    let total: usize = out.iter().map(|p| p.subnets.len()).sum();
    ensure!(
        total <= MAX_POLICY_SUBNETS as usize,
        "at most {MAX_POLICY_SUBNETS} policy subnets in all, the file has {total}"
    );
    Ok(out)
}

/// The policy's slot table over the WANs up now: its preferred WANs, else its fallback,
/// else none (its new connections are dropped and counted).
pub fn table(policy: &Policy, wans: &[WanView], method: Method) -> SlotTable {
    let is_up = |id: u8| wans.iter().any(|w| w.wan_id == id && w.up);
    let mut weights = [0u32; MAX_WANS];
    for &(id, w) in &policy.wans {
        if is_up(id) {
            weights[id as usize] = w;
        }
    }
    if weights.iter().all(|w| *w == 0) {
        for &id in &policy.fallback {
            if is_up(id) {
                weights[id as usize] = 1;
            }
        }
    }
    let mut table = crate::balance::wan::table_for(&weights, method);
    table.allowed = policy
        .wans
        .iter()
        .map(|(id, _)| *id)
        .chain(policy.fallback.iter().copied())
        .fold(0u8, |m, id| m | 1 << id);
    table
}

/// Writes every policy's table.
pub fn write_tables(
    maps: &mut Maps,
    policies: &[Policy],
    wans: &[WanView],
    method: Method,
) -> Result<()> {
    for p in policies {
        maps.slots
            .set(u32::from(p.id), table(p, wans, method), 0)
            .with_context(|| format!("cannot write the slot table of policy {}", p.name))?;
    }
    Ok(())
}

/// Replaces the subnet trie with the policies' subnets (a previous run's are removed).
pub fn write_subnets(maps: &mut Maps, policies: &[Policy]) -> Result<()> {
    let old: Vec<Key<u32>> = maps.policies.keys().flatten().collect();
    for k in old {
        let _ = maps.policies.remove(&k);
    }
    for p in policies {
        for &(addr, prefix) in &p.subnets {
            let key = Key::new(u32::from(prefix), u32::from_ne_bytes(addr.octets()));
            maps.policies.insert(&key, p.id, 0).with_context(|| {
                format!("cannot write subnet {addr}/{prefix} of policy {}", p.name)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use pcc_common::NO_WAN;

    use super::*;

    fn lan() -> Vec<Ipv4Net> {
        vec![Ipv4Net {
            addr: Ipv4Addr::new(198, 19, 10, 1),
            prefix: 24,
        }]
    }

    fn wans() -> Vec<String> {
        vec!["wan0".into(), "wan1".into()]
    }

    fn parse(text: &str) -> Result<Vec<Policy>> {
        let file: PolicyFile = toml::from_str(text)?;
        resolve(file.policy, &wans(), &lan())
    }

    #[test]
    fn resolves_the_clinic_example() {
        let p = parse(
            r#"
            [[policy]]
            name = "staff"
            subnets = ["198.19.10.0/28"]
            wans = ["wan0"]
            fallback = ["wan1"]

            [[policy]]
            name = "guests"
            subnets = ["198.19.10.128/25"]
            wans = ["wan0", "wan1"]
            weights = { wan1 = 3 }

            [[policy]]
            name = "printer"
            subnets = ["198.19.10.130"]
            wans = ["wan1"]
            "#,
        )
        .unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].wans, [(0, 1)]);
        assert_eq!(p[0].fallback, [1]);
        assert_eq!(p[1].wans, [(0, 1), (1, 3)]);
        assert_eq!(p[2].subnets, [(Ipv4Addr::new(198, 19, 10, 130), 32)]);
        assert_eq!(p[2].id, 3);
    }

    #[test]
    fn refuses_bad_policies_with_one_line_each() {
        for (text, says) in [
            (
                "[[policy]]\nname='a'\nsubnets=['198.19.10.0/24']\nwans=['wan9']",
                "names wan9",
            ),
            (
                "[[policy]]\nname='a'\nsubnets=['198.19.10.0/24']\nwans=[]",
                "has no WAN",
            ),
            (
                "[[policy]]\nname='a'\nsubnets=['10.0.0.0/8']\nwans=['wan0']",
                "lies in no LAN",
            ),
            (
                "[[policy]]\nname='a'\nsubnets=['198.19.10.0/33']\nwans=['wan0']",
                "not an IPv4 subnet",
            ),
            (
                "[[policy]]\nname='a'\nsubnets=['198.19.10.0/25']\nwans=['wan0']\n[[policy]]\nname='b'\nsubnets=['198.19.10.1/25']\nwans=['wan1']",
                "is in policies a and b",
            ),
            (
                "[[policy]]\nname='a'\nsubnets=['198.19.10.0/25']\nwans=['wan0']\nweights={wan1=2}",
                "not one of its wans",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn tables_prefer_then_fall_back_then_drop() {
        let p = parse(
            "[[policy]]\nname='a'\nsubnets=['198.19.10.0/25']\nwans=['wan0']\nfallback=['wan1']",
        )
        .unwrap();
        let view = |up0: bool, up1: bool| {
            [(0, up0), (1, up1)]
                .map(|(id, up)| WanView {
                    name: format!("wan{id}"),
                    wan_id: id,
                    weight: 1,
                    gateway: Ipv4Addr::UNSPECIFIED,
                    backup: false,
                    link_ok: up,
                    healthy: up,
                    up,
                    state_changes: 0,
                    since_unix: 0,
                    info: Default::default(),
                })
                .to_vec()
        };
        let t = table(&p[0], &view(true, true), Method::Pcc);
        assert!(t.slots.iter().all(|s| *s == 0) && t.allowed == 0b11);
        let t = table(&p[0], &view(false, true), Method::Pcc);
        assert!(t.slots.iter().all(|s| *s == 1));
        let t = table(&p[0], &view(false, false), Method::Pcc);
        assert!(t.slots.iter().all(|s| *s == NO_WAN));
    }
}
