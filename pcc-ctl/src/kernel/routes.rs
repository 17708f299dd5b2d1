//! The routing table decides what is balanced: the kernel's main IPv4 table is mirrored into
//! the dataplane's `ROUTES` trie (default routes through WANs left out, so what matches
//! nothing is balanced), and the next hops of routes through WANs into `NEIGHBOURS`. Why a
//! mirror and not `bpf_fib_lookup`: see `pcc_common::route`.
//!
//! Both are computed as values from one netlink dump each and only the difference is written,
//! so a refresh that finds nothing new writes nothing. Refreshed when netlink reports a change
//! (debounced: one dump per burst) and every second regardless.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::maps::lpm_trie::Key;
use pcc_common::route::{
    self, NEIGHBOURS_PER_WAN, Neighbour, NeighbourKey, Prefix, ROUTE_WAN, Route, WanPort,
};

use crate::{
    balance::wan::WanView,
    kernel::{maps::Maps, netlink::Netlink},
    sync::lock,
};

/// How often `poll` runs: a next hop the dataplane missed is asked for within this, so it is
/// resolved well before the host retransmits (TCP's first SYN retransmission: 1 s).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Refreshes closer together than this are put off: a link going down takes its routes and
/// neighbours with it in a burst of events.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// A refresh at least this often, also without events (one may be missed when the socket's
/// buffer overflows).
const FULL_REFRESH: Duration = Duration::from_secs(1);

fn be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn addr_of(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

fn trie_key((addr, prefix): Prefix) -> Key<u32> {
    Key::new(u32::from(prefix), be(addr))
}

/// The WANs as the mirror needs them.
pub fn wan_ports(wans: &[WanView]) -> Vec<WanPort> {
    wans.iter()
        .map(|w| WanPort {
            wan_id: w.wan_id,
            ifindex: w.info.ifindex,
            gateway: w.gateway,
        })
        .collect()
}

/// What the mirror last wrote, and the next hops it keeps resolved.
pub struct Routing {
    /// `ROUTES` as last written.
    routes: BTreeMap<Prefix, Route>,
    /// `NEIGHBOURS` as last written.
    neighbours: BTreeMap<NeighbourKey, [u8; 6]>,
    /// Next hops kept resolved by managed neighbour entries, with the ifindex they were
    /// added on, oldest first (per WAN at most `NEIGHBOURS_PER_WAN`): removed when evicted
    /// and on exit.
    managed: Vec<(NeighbourKey, u32)>,
    /// Next hops the dataplane missed, not yet acted on.
    wanted: BTreeSet<NeighbourKey>,
    /// A change was reported since the last refresh.
    dirty: bool,
    last: Option<Instant>,
}

impl Routing {
    /// Starts from what the maps hold: a previous controller's mirror (adopted pinned state)
    /// is diffed against, not rewritten, and its next hops are kept resolved and removed on
    /// exit as ours.
    pub fn adopt(maps: &Maps, wans: &[WanView]) -> Self {
        let routes = maps
            .routes
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(k, v)| ((addr_of(k.data()), k.prefix_len() as u8), v))
            .collect();
        let neighbours: BTreeMap<NeighbourKey, [u8; 6]> = maps
            .neighbours
            .iter()
            .filter_map(std::result::Result::ok)
            .map(|(k, v)| (k, v.mac))
            .collect();
        Self {
            managed: neighbours
                .keys()
                .filter_map(|k| {
                    let wan = wans.iter().find(|w| w.wan_id == k.wan_id)?;
                    Some((*k, wan.info.ifindex))
                })
                .collect(),
            routes,
            neighbours,
            wanted: BTreeSet::new(),
            dirty: true,
            last: None,
        }
    }

    /// Routes mirrored into the dataplane.
    pub fn routes_mirrored(&self) -> usize {
        self.routes.len()
    }

    /// Next-hop MACs mirrored into the dataplane.
    pub fn neighbours_mirrored(&self) -> usize {
        self.neighbours.len()
    }

    /// Something the mirror depends on may have changed (a netlink event, a WAN re-created,
    /// re-addressed or with a new gateway).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Called often (every 200 ms): takes the next hops the dataplane missed, and refreshes
    /// when a change is pending and the last refresh is `DEBOUNCE` old, or every second.
    pub async fn poll(&mut self, nl: &Netlink, maps: &std::sync::Mutex<Maps>, wans: &[WanView]) {
        self.wanted.extend(take_wanted(&mut lock(maps)));
        let since = self.last.map_or(Duration::MAX, |t| t.elapsed());
        let pending = self.dirty || !self.wanted.is_empty();
        if since < FULL_REFRESH && !(pending && since >= DEBOUNCE) {
            return;
        }
        if let Err(e) = self.refresh(nl, maps, wans).await {
            log::warn!("routes: {e:#}");
        }
    }

    /// Dumps the main table and the neighbours, and writes what changed.
    pub async fn refresh(
        &mut self,
        nl: &Netlink,
        maps: &std::sync::Mutex<Maps>,
        wans: &[WanView],
    ) -> Result<()> {
        self.last = Some(Instant::now());
        self.dirty = false;
        let ports = wan_ports(wans);
        let desired = route::desired(&nl.main_routes().await?, &ports);
        // Static routes' gateways are resolved before the first connection needs them.
        let gateways = desired
            .values()
            .filter(|r| r.kind == ROUTE_WAN && r.gateway != 0)
            .map(|r| NeighbourKey::new(r.wan_id, r.gateway));
        let wanted = std::mem::take(&mut self.wanted);
        for key in gateways.chain(wanted) {
            self.manage(nl, wans, key).await;
        }
        let kernel = nl.ipv4_neighbours().await?;
        let mut next_hops = BTreeMap::new();
        for (key, added_on) in self.managed.iter_mut() {
            let Some(wan) = wans.iter().find(|w| w.wan_id == key.wan_id) else {
                continue;
            };
            let addr = addr_of(key.addr);
            match kernel
                .iter()
                .find(|(i, a, _)| *i == wan.info.ifindex && *a == addr)
            {
                Some((_, _, Some(mac))) => {
                    next_hops.insert(*key, *mac);
                }
                Some((_, _, None)) => {}
                // Flushed with an address, or the interface was re-created: ask again.
                None => match nl.add_managed_neighbour(wan.info.ifindex, addr).await {
                    Ok(()) => *added_on = wan.info.ifindex,
                    Err(e) => log::debug!("{e:#}"),
                },
            }
        }
        let mut maps = lock(maps);
        self.write_routes(&mut maps, desired)?;
        self.write_neighbours(&mut maps, next_hops)
    }

    /// Keeps `key` resolved from now on; the WAN's oldest next hop makes room when it has
    /// `NEIGHBOURS_PER_WAN` already.
    async fn manage(&mut self, nl: &Netlink, wans: &[WanView], key: NeighbourKey) {
        let Some(wan) = wans.iter().find(|w| w.wan_id == key.wan_id) else {
            return;
        };
        if self.managed.iter().any(|(k, _)| *k == key) {
            return;
        }
        let of_wan: Vec<usize> = (0..self.managed.len())
            .filter(|&i| self.managed[i].0.wan_id == key.wan_id)
            .collect();
        if of_wan.len() >= NEIGHBOURS_PER_WAN {
            let (old, ifindex) = self.managed.remove(of_wan[0]);
            // The WAN's gateway stays: the WAN keeps it resolved for itself.
            if wan.gateway != addr_of(old.addr) {
                release(nl, ifindex, old).await;
            }
        }
        self.managed.push((key, wan.info.ifindex));
        if let Err(e) = nl
            .add_managed_neighbour(wan.info.ifindex, addr_of(key.addr))
            .await
        {
            log::warn!("WAN {}: {e:#}", wan.name);
        }
    }

    fn write_routes(&mut self, maps: &mut Maps, desired: BTreeMap<Prefix, Route>) -> Result<()> {
        for (prefix, route) in &desired {
            if self.routes.get(prefix) != Some(route) {
                maps.routes
                    .insert(&trie_key(*prefix), *route, 0)
                    .context("cannot write ROUTES (more routes than it holds?)")?;
            }
        }
        for prefix in self.routes.keys().filter(|p| !desired.contains_key(p)) {
            let _ = maps.routes.remove(&trie_key(*prefix));
        }
        if desired != self.routes {
            log::debug!("{} routes mirrored", desired.len());
        }
        self.routes = desired;
        Ok(())
    }

    fn write_neighbours(
        &mut self,
        maps: &mut Maps,
        desired: BTreeMap<NeighbourKey, [u8; 6]>,
    ) -> Result<()> {
        for (key, mac) in &desired {
            if self.neighbours.get(key) != Some(mac) {
                let value = Neighbour { mac: *mac, _pad: 0 };
                maps.neighbours
                    .insert(key, value, 0)
                    .context("cannot write NEIGHBOURS")?;
            }
        }
        for key in self.neighbours.keys().filter(|k| !desired.contains_key(k)) {
            let _ = maps.neighbours.remove(key);
        }
        self.neighbours = desired;
        Ok(())
    }

    /// Removes the neighbour entries it added (on exit, when the gateways' go too).
    pub async fn release_all(&mut self, nl: &Netlink) {
        for (key, ifindex) in std::mem::take(&mut self.managed) {
            release(nl, ifindex, key).await;
        }
    }
}

/// Removes a next hop's managed entry (the kernel relearns it on demand).
async fn release(nl: &Netlink, ifindex: u32, key: NeighbourKey) {
    if let Err(e) = nl.del_neighbour(ifindex, addr_of(key.addr)).await {
        log::debug!("{e:#}");
    }
}

/// The next hops the dataplane asked for, removed from its map (each once).
fn take_wanted(maps: &mut Maps) -> BTreeSet<NeighbourKey> {
    let keys: BTreeSet<NeighbourKey> = maps
        .neighbours_wanted
        .keys()
        .filter_map(std::result::Result::ok)
        .collect();
    for key in &keys {
        let _ = maps.neighbours_wanted.remove(key);
    }
    keys
}
