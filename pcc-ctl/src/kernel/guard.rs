//! The kernel forwarding guard. Whatever the XDP programs pass to the kernel (IP options,
//! packets over a WAN's MTU, anything unknown) is forwarded by the kernel itself when
//! `net.ipv4.ip_forward=1`, as on most routers, and would leave a WAN with its LAN source
//! address, or let unsolicited traffic from a WAN into the LAN. An nftables table of pcc's own
//! closes both holes for as long as pcc runs:
//!
//! - LAN sources leaving a WAN through the kernel are masqueraded, to whatever port the kernel
//!   picks: masquerading happens in POSTROUTING, before the TC egress hook on the WAN, which
//!   records the translated tuple as the router's own (`lan_id == LAN_ROUTER`), so pcc's NAT
//!   never hands it out and its replies reach the kernel, which translates them back. A tuple
//!   one of pcc's mappings already holds is kept in by the hook (counted), never sent;
//! - from a WAN to a LAN only replies the kernel itself tracks pass (`ct state
//!   established,related`), everything else is dropped and counted;
//! - towards a WAN, what conntrack calls invalid is dropped: NAT only applies to tracked
//!   packets, so a lone RST, an ICMP error about nothing or a TCP segment outside its window
//!   would otherwise leave with its LAN source address. So is TCP that would open a kernel
//!   mapping without a SYN (nf_conntrack's loose tracking picks up mid-stream segments): only
//!   a SYN opens a connection, in the kernel as in pcc's dataplane.
//!
//! The `nft` tool is the interface (it ships with every nftables system, and applies a whole
//! table atomically from text), so the rules are plain to read with `nft list table ip NAME`.
use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, ensure};

use crate::kernel::netlink::Ipv4Net;

/// What the guard protects.
pub struct GuardSpec<'a> {
    pub wans: &'a [String],
    pub lans: &'a [(String, Ipv4Net)],
}

/// The installed table; removed by [`ForwardGuard::remove`].
pub struct ForwardGuard {
    table: String,
    /// What it was installed for (a LAN that is renumbered changes it).
    wans: Vec<String>,
    lans: Vec<(String, Ipv4Net)>,
}

/// The table name for a set of LANs: one pcc instance per LAN port, so the first LAN names
/// it (nft identifiers: letters, digits, `_`).
pub fn table_name(first_lan: &str) -> String {
    let clean: String = first_lan
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("pcc_guard_{clean}")
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The ruleset, replacing any table of the same name atomically (left behind by a pcc that
/// was killed).
pub fn ruleset(table: &str, spec: &GuardSpec) -> String {
    let wans = quoted(spec.wans);
    let lan_names: Vec<String> = spec.lans.iter().map(|(n, _)| n.clone()).collect();
    let lans = quoted(&lan_names);
    let nets = spec
        .lans
        .iter()
        .map(|(_, net)| {
            let network = u32::from(net.addr) & u32::from(net.netmask());
            format!("{}/{}", std::net::Ipv4Addr::from(network), net.prefix)
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname {{ {wans} }} oifname {{ {lans} }} ct state established,related accept\n\
         \t\tiifname {{ {wans} }} oifname {{ {lans} }} counter drop comment \"unsolicited from a WAN\"\n\
         \t\toifname {{ {wans} }} ct state invalid counter drop comment \"untrackable: NAT would not apply\"\n\
         \t\toifname {{ {wans} }} ct state new tcp flags & (fin | syn | rst | ack) != syn counter drop comment \"TCP without a SYN opens nothing\"\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\toifname {{ {wans} }} ip saddr {{ {nets} }} counter masquerade comment \"LAN traffic the XDP path passed to the kernel\"\n\
         \t}}\n\
         }}\n"
    )
}

fn nft(stdin: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run nft (install nftables, or pass --no-forward-guard)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(stdin.as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    ensure!(
        out.status.success(),
        "nft refused the ruleset: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl ForwardGuard {
    pub fn install(spec: &GuardSpec) -> Result<ForwardGuard> {
        let first_lan = spec.lans.first().map_or("lan", |(n, _)| n.as_str());
        let table = table_name(first_lan);
        nft(&ruleset(&table, spec))
            .with_context(|| format!("cannot install the forwarding guard (table ip {table})"))?;
        Ok(ForwardGuard {
            table,
            wans: spec.wans.to_vec(),
            lans: spec.lans.to_vec(),
        })
    }

    /// A LAN port got another subnet: the masquerade rules name the subnets, so the table is
    /// replaced (atomically, like at start).
    pub fn renumber(&mut self, lan: &str, net: Ipv4Net) -> Result<()> {
        for (name, n) in &mut self.lans {
            if name == lan {
                *n = net;
            }
        }
        let spec = GuardSpec {
            wans: &self.wans,
            lans: &self.lans,
        };
        nft(&ruleset(&self.table, &spec)).with_context(|| {
            format!(
                "cannot update the forwarding guard (table ip {})",
                self.table
            )
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Removes the table; a failure is logged, not fatal (the controller is exiting).
    pub fn remove(self) {
        if let Err(e) = nft(&format!("delete table ip {}\n", self.table)) {
            log::warn!("removing the forwarding guard: {e:#}");
        }
    }
}

/// Removes a guard table left by a controller that was killed; whether there was one.
pub fn remove_table(table: &str) -> bool {
    nft(&format!("delete table ip {table}\n")).is_ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn ruleset_names_every_port_and_subnet() {
        let wans = vec!["wan0".to_string(), "wan1".to_string()];
        let lans = vec![(
            "lan0".to_string(),
            Ipv4Net {
                addr: Ipv4Addr::new(198, 19, 10, 1),
                prefix: 24,
            },
        )];
        let spec = GuardSpec {
            wans: &wans,
            lans: &lans,
        };
        let r = ruleset(&table_name("lan0"), &spec);
        assert!(r.starts_with("table ip pcc_guard_lan0\ndelete table ip pcc_guard_lan0\n"));
        assert!(r.contains("iifname { \"wan0\", \"wan1\" } oifname { \"lan0\" } ct state"));
        assert!(r.contains("oifname { \"wan0\", \"wan1\" } ct state invalid counter drop"));
        assert!(r.contains("ct state new tcp flags & (fin | syn | rst | ack) != syn counter drop"));
        assert!(r.contains("ip saddr { 198.19.10.0/24 } counter masquerade comment"));
        assert_eq!(table_name("br-lan.10"), "pcc_guard_br_lan_10");
    }
}
