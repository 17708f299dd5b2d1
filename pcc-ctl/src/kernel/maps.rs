//! Typed handles on the dataplane's maps.
use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, DevMap, HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
};
use pcc_common::{
    BindKey, Binding, Config, Counter, CtEvent, CtIn, CtOut, ExpirySlot, FlowKey, LanInfo,
    MAX_LANS, Owner, PublicKey, SlotTable, WanCounters, WanInfo,
    route::{Neighbour, NeighbourKey, Route},
};

pub struct Maps {
    pub config: Array<MapData, Config>,
    pub wans: Array<MapData, WanInfo>,
    pub lans: Array<MapData, LanInfo>,
    pub slots: Array<MapData, SlotTable>,
    /// Source subnet -> policy number (`SLOTS` index).
    pub policies: LpmTrie<MapData, u32, u8>,
    pub devmap: DevMap<MapData>,
    pub ct_out: HashMap<MapData, FlowKey, CtOut>,
    pub ct_in: HashMap<MapData, FlowKey, CtIn>,
    pub stats: PerCpuArray<MapData, u64>,
    pub wan_stats: PerCpuArray<MapData, WanCounters>,
    /// The kernel's main table without WAN default routes (destination prefix -> route).
    pub routes: LpmTrie<MapData, u32, Route>,
    /// Route next hops' MACs, from the kernel's neighbour table.
    pub neighbours: HashMap<MapData, NeighbourKey, Neighbour>,
    /// Next hops the dataplane missed in `neighbours` (LRU), for the controller to resolve.
    pub neighbours_wanted: HashMap<MapData, NeighbourKey, u64>,
    /// Endpoint-independent mappings: LAN endpoint on a WAN -> public endpoint.
    pub bind_out: HashMap<MapData, BindKey, Binding>,
    /// Public endpoint -> the LAN endpoint holding it.
    pub bind_in: HashMap<MapData, PublicKey, Owner>,
    /// Connections each LAN host holds, by `LanInfo::host_index`.
    pub host_connections: Array<MapData, u64>,
    /// Every tracked tuple's place in the dataplane's sweep.
    pub expiry_slots: Array<MapData, ExpirySlot>,
    pub ct_events: PerCpuArray<MapData, u64>,
}

/// Slots `0..N` of a per-CPU array of counts, each summed over CPUs (the counter enums are
/// numbered from 0 in order, which their host tests check).
fn sum_per_cpu<const N: usize>(array: &PerCpuArray<MapData, u64>, name: &str) -> Result<[u64; N]> {
    let mut out = [0; N];
    for (i, total) in out.iter_mut().enumerate() {
        let per_cpu = array
            .get(&(i as u32), 0)
            .with_context(|| format!("cannot read {name}"))?;
        *total = per_cpu.iter().sum();
    }
    Ok(out)
}

fn take<T: TryFrom<aya::maps::Map>>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T::Error: std::error::Error + Send + Sync + 'static,
{
    let map = ebpf
        .take_map(name)
        .with_context(|| format!("the eBPF object has no map {name}"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Maps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Ok(Self {
            config: take(ebpf, "CONFIG")?,
            wans: take(ebpf, "WANS")?,
            lans: take(ebpf, "LANS")?,
            slots: take(ebpf, "SLOTS")?,
            policies: take(ebpf, "POLICIES")?,
            devmap: take(ebpf, "DEVMAP")?,
            ct_out: take(ebpf, "CT_OUT")?,
            ct_in: take(ebpf, "CT_IN")?,
            stats: take(ebpf, "STATS")?,
            wan_stats: take(ebpf, "WAN_STATS")?,
            routes: take(ebpf, "ROUTES")?,
            neighbours: take(ebpf, "NEIGHBOURS")?,
            neighbours_wanted: take(ebpf, "NEIGHBOURS_WANTED")?,
            bind_out: take(ebpf, "NAT_BIND_OUT")?,
            bind_in: take(ebpf, "NAT_BIND_IN")?,
            host_connections: take(ebpf, "HOST_CONNECTIONS")?,
            expiry_slots: take(ebpf, "EXPIRY_SLOTS")?,
            ct_events: take(ebpf, "CT_EVENTS")?,
        })
    }

    /// Where a LAN host (network byte order) is counted in `host_connections`, if it is.
    pub fn host_index(&self, lan_addr: u32) -> Option<u32> {
        (0..MAX_LANS as u8).find_map(|lan_id| {
            self.lans
                .get(&u32::from(lan_id), 0)
                .ok()?
                .host_index(lan_id, lan_addr)
        })
    }

    /// Connections a LAN host (network byte order) holds, as the dataplane counts them.
    pub fn host_connections(&self, lan_addr: u32) -> u64 {
        self.host_index(lan_addr)
            .and_then(|i| self.host_connections.get(&i, 0).ok())
            .unwrap_or(0)
    }

    /// Every dataplane counter, summed over CPUs.
    pub fn counters(&self) -> Result<[u64; Counter::COUNT]> {
        sum_per_cpu(&self.stats, "STATS")
    }

    /// Every conntrack event count, summed over CPUs.
    pub fn ct_events(&self) -> Result<[u64; CtEvent::COUNT]> {
        sum_per_cpu(&self.ct_events, "CT_EVENTS")
    }

    /// One WAN's traffic counters, summed over CPUs.
    pub fn wan_counters(&self, wan_id: u8) -> Result<WanCounters> {
        let per_cpu = self
            .wan_stats
            .get(&u32::from(wan_id), 0)
            .context("cannot read WAN_STATS")?;
        Ok(per_cpu
            .iter()
            .fold(WanCounters::default(), |a, c| WanCounters {
                rx_packets: a.rx_packets + c.rx_packets,
                rx_bytes: a.rx_bytes + c.rx_bytes,
                tx_packets: a.tx_packets + c.tx_packets,
                tx_bytes: a.tx_bytes + c.tx_bytes,
                flows_created: a.flows_created + c.flows_created,
            }))
    }
}
