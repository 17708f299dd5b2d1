//! The event loop of `pcc-ctl up`: waits for what happens (a signal, netlink events, probe
//! results, timers) and reacts; the reactions that are more than a line live next to it.
use std::{sync::atomic::Ordering, time::Duration};

use anyhow::Result;
use futures::{FutureExt as _, StreamExt as _};
use pcc_common::Method;

use super::{
    QUOTA_SAVE_TICKS, Stop,
    installed::Installed,
    links::{refresh_links, sample_rates},
    probe_ident, relink,
    relink::LanView,
    wan_addr, weights,
};
use crate::sync::lock;
use crate::{
    balance::{
        failover::Failover,
        health::Probers,
        quota::{self, Action},
        wan::{self, WanView},
    },
    config::Config,
    kernel::{conntrack, netlink::Netlink, routes},
    shared::Shared,
};

/// How often link state and gateway MACs are re-read even without a netlink event.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired connections are collected.
const GC_INTERVAL: Duration = Duration::from_secs(2);

/// What the controller put into the kernel and keeps in step while it runs, and the signals
/// that end the run.
pub(super) struct Owned<'a> {
    /// The programs, pins, offloads, guard, routes and neighbour entries (see `installed`):
    /// followed as interfaces come back as new ones and LAN subnets change.
    pub(super) installed: &'a mut Installed,
    pub(super) lans: Vec<LanView>,
    pub(super) probers: &'a mut Probers,
    /// The grace of WANs that went down, and the resets once it ends.
    pub(super) failover: &'a mut Failover,
    /// What ends it.
    pub(super) stop: &'a mut Stop,
}

/// Runs until SIGINT or SIGTERM: follows netlink events and probe results, keeps the maps and
/// default routes in step, collects expired connections.
pub(super) async fn serve(
    nl: &Netlink,
    shared: &Shared,
    mut wans: Vec<WanView>,
    mut owned: Owned<'_>,
    mut events: impl futures::Stream<Item = ()> + Unpin,
    mut health_rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    config: &Config,
) -> Result<()> {
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut routes_poll = tokio::time::interval(routes::POLL_INTERVAL);
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let timeouts = config.timeouts;
    let mut last_counters: Vec<(u64, u64)> = vec![(0, 0); wans.len()];
    let mut last_sample = tokio::time::Instant::now();
    // The WANs taking new connections when the default routes last followed them (at start).
    let mut in_use: Vec<bool> = wans.iter().map(wan::in_use(&wans)).collect();
    let mut gc_passes: u64 = 0;
    let mut ticks: u64 = 0;
    loop {
        let before = relink::snapshot(&wans);
        // (links re-read, anything the dataplane sees changed)
        let (refreshed, links_changed) = tokio::select! {
            _ = owned.stop.recv() => break,
            Some(()) = events.next() => {
                // A burst of events (a link going down takes its routes and neighbours
                // with it) needs one refresh.
                while let Some(Some(())) = events.next().now_or_never() {}
                (true, refresh_links(nl, &mut wans).await)
            }
            Some(()) = health_rx.recv() => {
                while health_rx.try_recv().is_ok() {}
                (false, false)
            }
            _ = refresh.tick() => {
                sample_rates(shared, &wans, &mut last_counters, &mut last_sample);
                let changed = refresh_links(nl, &mut wans).await;
                ticks += 1;
                let weights_changed = follow_weights(shared, &mut wans, config, ticks);
                (true, changed || weights_changed)
            }
            _ = routes_poll.tick() => {
                owned.installed.routing.poll(nl, &shared.maps, &wans).await;
                shared.routes_mirrored.store(owned.installed.routing.routes_mirrored(), Ordering::Relaxed);
                shared.neighbours_mirrored.store(owned.installed.routing.neighbours_mirrored(), Ordering::Relaxed);
                continue;
            }
            _ = at(owned.failover.next_end(&wans)) => {
                for (wan_id, sent) in owned.failover.reset_ended(&shared.maps, &wans) {
                    shared.failover_resets[usize::from(wan_id)].fetch_add(sent, Ordering::Relaxed);
                }
                continue;
            }
            _ = gc.tick() => {
                gc_passes += 1;
                let scan_orphans = gc_passes.is_multiple_of(conntrack::ORPHAN_SCAN_EVERY);
                let report = conntrack::collect(&mut lock(&shared.maps), &timeouts, conntrack::monotonic_ns(), scan_orphans)?;
                *lock(&shared.gc) = report;
                continue;
            }
        };
        // After every link refresh: a WAN waiting for its gateway may get one without a
        // link event.
        let restart = if refreshed {
            let mut ports = owned.installed.ports();
            let renumbered =
                relink::follow_lans(nl, shared, &mut ports, config, &mut owned.lans).await;
            for i in renumbered {
                let lan = &owned.lans[i];
                if let Some(g) = owned.installed.guard.as_mut()
                    && let Err(e) = g.renumber(&lan.name, lan.net)
                {
                    log::warn!("LAN {}: {e:#}", lan.name);
                }
            }
            relink::follow(
                nl,
                shared,
                &mut owned.installed.ports(),
                config,
                &before,
                &mut wans,
            )
            .await
        } else {
            Vec::new()
        };
        for &i in &restart {
            owned.probers.forget(wans[i].wan_id as usize);
            owned
                .installed
                .manage((wans[i].info.ifindex, wans[i].gateway));
        }
        let links_changed = links_changed || !restart.is_empty();
        if refreshed {
            // A route, address, link or neighbour event, or WANs re-created or with new
            // gateways: the mirror is refreshed at its next poll.
            owned.installed.routing.mark_dirty();
        }
        if links_changed {
            for wan in &wans {
                if let Err(e) = owned.probers.ensure(
                    wan.wan_id as usize,
                    &wan.name,
                    wan_addr(wan),
                    probe_ident(wan.wan_id, config.nat_ports.min),
                ) {
                    log::warn!("WAN {}: {e:#}", wan.name);
                }
            }
        }
        let mut states_changed = false;
        let mut resolve = Vec::new();
        {
            let mut health = lock(&shared.health);
            for wan in wans.iter_mut() {
                let h = &mut health[wan.wan_id as usize];
                if wan.up && !wan.link_ok {
                    h.force_down(shared.clock.now_ms());
                }
                wan.healthy = h.is_up();
                if wan.settle() {
                    states_changed = true;
                    if wan.up {
                        log::info!("WAN {} is up", wan.name);
                    } else if !wan.link_ok {
                        log::warn!(
                            "WAN {} is down: link down, no address or gateway {} unresolved",
                            wan.name,
                            wan.gateway
                        );
                    } else {
                        log::warn!("WAN {} is down: {}", wan.name, h.describe());
                        // The gateway may have a new MAC that the kernel's still-"reachable"
                        // entry hides for a minute: resolve it afresh.
                        resolve.push((wan.info.ifindex, wan.gateway));
                    }
                }
            }
        }
        owned.failover.follow(&wans);
        for (ifindex, gateway) in resolve {
            let _ = nl.del_neighbour(ifindex, gateway).await;
            if let Err(e) = nl.add_managed_neighbour(ifindex, gateway).await {
                log::warn!("{e:#}");
            }
        }
        if states_changed || links_changed {
            {
                let maps = &mut lock(&shared.maps);
                weights::apply(maps, &wans, &shared.policies, config.method)?;
                *lock(&shared.wans) = wans.clone();
            }
            // On a change of the WANs in use: up/down, or a quota turning a WAN into a backup
            // (a least-loaded weight update changes neither).
            let now_in_use: Vec<bool> = wans.iter().map(wan::in_use(&wans)).collect();
            if now_in_use != in_use {
                owned.installed.routes.follow(nl, &wans).await;
                in_use = now_in_use;
            }
        }
        if states_changed && !wans.iter().any(|w| w.up) {
            log::warn!("no WAN is up: traffic from the LAN is dropped until one returns");
        }
    }
    if let Some(meter) = lock(&shared.quota).as_ref()
        && let Err(e) = meter.save()
    {
        log::warn!("{e:#}");
    }
    log::info!("stopping: detaching from {}", config.interfaces().join(","));
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Counts quota usage, applies a pending `pcc-ctl quota --set` and saves the usage every few
/// seconds; the last threshold each quota'd WAN crossed (none without quotas).
fn count_quotas(shared: &Shared, ticks: u64) -> Vec<(u8, usize, Option<Action>)> {
    let mut meter = lock(&shared.quota);
    let Some(meter) = meter.as_mut() else {
        return Vec::new();
    };
    {
        let maps = lock(&shared.maps);
        meter.update(
            |id| maps.wan_counters(id).map_or(0, |c| c.rx_bytes + c.tx_bytes),
            quota::unix_now(),
        );
    }
    if ticks.is_multiple_of(QUOTA_SAVE_TICKS)
        && let Err(e) = meter.save()
    {
        log::warn!("{e:#}");
    }
    meter.crossed()
}

/// Recomputes every WAN's effective weight and tier (`weights`) and takes it into `wans`;
/// whether one changed.
fn follow_weights(shared: &Shared, wans: &mut [WanView], config: &Config, ticks: u64) -> bool {
    let quotas = count_quotas(shared, ticks);
    let rates = (config.method == Method::LeastLoaded).then(|| lock(&shared.rates).clone());
    let inputs = weights::Inputs {
        rates: rates.as_deref(),
        quotas: &quotas,
    };
    let effective = weights::compute(config, wans, inputs);
    weights::adopt(wans, &effective, &quotas)
}
