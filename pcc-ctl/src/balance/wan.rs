//! Each WAN's state: link (carrier, address, gateway MAC) and health (probes) decide whether
//! it takes new connections; the dataplane's WANS and SLOTS maps follow (and the kernel's
//! default routes, in `kernel::default_routes`).
use std::net::Ipv4Addr;

use anyhow::{Context as _, Result};
use pcc_common::{MAX_WANS, Method, NO_WAN, SlotTable, WAN_FLAG_UP, WanInfo, slots};

use crate::kernel::maps::Maps;

/// One WAN as the controller tracks it.
#[derive(Clone, Debug)]
pub struct WanView {
    pub name: String,
    pub wan_id: u8,
    pub weight: u32,
    pub gateway: Ipv4Addr,
    /// Failover-only: used while no primary WAN is up.
    pub backup: bool,
    /// Carrier up, IPv4 address present, gateway MAC resolved.
    pub link_ok: bool,
    /// Enough probe targets answer.
    pub healthy: bool,
    pub up: bool,
    pub state_changes: u64,
    /// Unix time of the last state change (start-up counts as one).
    pub since_unix: u64,
    pub info: WanInfo,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl WanView {
    /// Recomputes `up`; returns whether it changed.
    pub fn settle(&mut self) -> bool {
        let up = self.link_ok && self.healthy;
        self.info.flags = if up { WAN_FLAG_UP } else { 0 };
        if up == self.up {
            return false;
        }
        self.up = up;
        self.state_changes += 1;
        self.since_unix = unix_now();
        true
    }
}

/// Which WANs take new connections: the live primaries, or, when none is live, the live
/// backups (`--backup`, or a WAN a quota demoted).
pub fn in_use(wans: &[WanView]) -> impl Fn(&WanView) -> bool + use<> {
    let any_primary = wans.iter().any(|w| w.up && !w.backup);
    move |w| w.up && w.backup != any_primary
}

/// Slot-table weights of the WANs in use.
pub fn weights_of(wans: &[WanView]) -> [u32; MAX_WANS] {
    let in_use = in_use(wans);
    let mut w = [0; MAX_WANS];
    for wan in wans.iter().filter(|w| in_use(w)) {
        w[wan.wan_id as usize] = wan.weight;
    }
    w
}

/// The slot table for `method` over the usable WANs: rendezvous slots for the hashing
/// methods (a WAN that leaves moves only its own slots), the turn order for `nth`.
pub fn slot_table(wans: &[WanView], method: Method) -> SlotTable {
    table_for(&weights_of(wans), method)
}

/// The slot table `method` builds over `weights` (by `wan_id`).
pub fn table_for(weights: &[u32; MAX_WANS], method: Method) -> SlotTable {
    match method {
        Method::Nth => {
            let mut table = SlotTable::default();
            pcc_common::method::round_robin_order(weights, &mut table.slots, NO_WAN);
            table
        }
        _ => slots::build(weights),
    }
}

/// Writes every WAN and the slot table built over the usable ones.
pub fn write_maps(maps: &mut Maps, wans: &[WanView], method: Method) -> Result<()> {
    for wan in wans {
        maps.wans
            .set(u32::from(wan.wan_id), wan.info, 0)
            .context("cannot write WANS")?;
    }
    maps.slots
        .set(0, slot_table(wans, method), 0)
        .context("cannot write SLOTS")?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// WAN `id` (weight `id + 1`), backup or not, up or down: for the tests of other modules too.
    pub(crate) fn wan(id: u8, backup: bool, up: bool) -> WanView {
        WanView {
            name: format!("wan{id}"),
            wan_id: id,
            weight: u32::from(id) + 1,
            gateway: Ipv4Addr::UNSPECIFIED,
            backup,
            link_ok: up,
            healthy: up,
            up,
            state_changes: 0,
            since_unix: 0,
            info: WanInfo::default(),
        }
    }

    #[test]
    fn backups_only_carry_traffic_when_no_primary_is_up() {
        let w = weights_of(&[
            wan(0, false, true),
            wan(1, false, false),
            wan(2, true, true),
        ]);
        assert_eq!(&w[..3], &[1, 0, 0]);
        let w = weights_of(&[
            wan(0, false, false),
            wan(1, false, false),
            wan(2, true, true),
        ]);
        assert_eq!(&w[..3], &[0, 0, 3]);
        let w = weights_of(&[wan(0, false, false), wan(2, true, false)]);
        assert!(w.iter().all(|&x| x == 0), "nothing up, nothing used");
    }

    #[test]
    fn settle_counts_state_changes() {
        let mut w = wan(0, false, true);
        assert!(!w.settle());
        w.healthy = false;
        assert!(w.settle());
        assert_eq!((w.up, w.info.flags, w.state_changes), (false, 0, 1));
        w.healthy = true;
        assert!(w.settle());
        assert_eq!(
            (w.up, w.info.flags, w.state_changes),
            (true, WAN_FLAG_UP, 2)
        );
    }
}
