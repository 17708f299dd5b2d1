//! What the daemon's loop and the HTTP endpoint share: the maps, the WAN views as last
//! written, health, throughput, quota usage and a few counts. It sits below `daemon` and
//! `http`, which both use it and not each other (the endpoint is started by the daemon).
use std::sync::{
    Mutex,
    atomic::{AtomicU64, AtomicUsize},
};

use pcc_common::MAX_WANS;

use crate::{
    balance::{
        health::{Clock, HealthTable},
        policy::Policy,
        quota::Meter,
        wan::WanView,
    },
    kernel::{conntrack::GcReport, maps::Maps},
};

/// What the metrics endpoint and the background tasks share.
pub struct Shared {
    pub maps: Mutex<Maps>,
    pub wans: Mutex<Vec<WanView>>,
    pub gc: Mutex<GcReport>,
    pub health: HealthTable,
    pub clock: Clock,
    /// Per WAN (by `wan_id`): (rx, tx) bits per second over the last second.
    pub rates: Mutex<Vec<(f64, f64)>>,
    pub classifier: String,
    /// Source-subnet policies (`--config`), re-tabled whenever WAN states change.
    pub policies: Vec<Policy>,
    /// Quota usage (`[[quota]]` in `--config`).
    pub quota: Mutex<Option<Meter>>,
    /// Routes of the main table mirrored into the dataplane, and next-hop MACs with them.
    pub routes_mirrored: AtomicUsize,
    pub neighbours_mirrored: AtomicUsize,
    /// TCP resets sent after a WAN's failover grace ended, per WAN (by `wan_id`).
    pub failover_resets: [AtomicU64; MAX_WANS],
}
