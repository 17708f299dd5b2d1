//! The event loop of `pcc-ctl up`: waits for what happens (a signal, netlink events, probe
//! results, timers); what each does is a method of `Running`.
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
    sync::lock,
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
/// default routes in step, collects expired connections. This is the `select!` only: what
/// each event does is a method of `Running`.
pub(super) async fn serve(
    nl: &Netlink,
    shared: &Shared,
    wans: Vec<WanView>,
    owned: Owned<'_>,
    mut events: impl futures::Stream<Item = ()> + Unpin,
    mut health_rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    config: &Config,
) -> Result<()> {
    let Owned {
        installed,
        lans,
        probers,
        failover,
        stop,
    } = owned;
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut routes_poll = tokio::time::interval(routes::POLL_INTERVAL);
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let mut run = Running {
        nl,
        shared,
        config,
        // The WANs taking new connections when the default routes last followed them (at
        // start).
        in_use: wans.iter().map(wan::in_use(&wans)).collect(),
        last_counters: vec![(0, 0); wans.len()],
        last_sample: tokio::time::Instant::now(),
        gc_passes: 0,
        ticks: 0,
        wans,
        installed,
        lans,
        probers,
        failover,
    };
    loop {
        let before = relink::snapshot(&run.wans);
        // (links re-read, anything the dataplane sees changed)
        let (refreshed, links_changed) = tokio::select! {
            _ = stop.recv() => break,
            Some(()) = events.next() => {
                // A burst of events (a link going down takes its routes and neighbours
                // with it) needs one refresh.
                while let Some(Some(())) = events.next().now_or_never() {}
                (true, refresh_links(nl, &mut run.wans).await)
            }
            Some(()) = health_rx.recv() => {
                while health_rx.try_recv().is_ok() {}
                (false, false)
            }
            _ = refresh.tick() => (true, run.tick().await),
            _ = routes_poll.tick() => {
                run.poll_routes().await;
                continue;
            }
            _ = at(run.failover.next_end(&run.wans)) => {
                run.reset_ended();
                continue;
            }
            _ = gc.tick() => {
                run.collect()?;
                continue;
            }
        };
        run.react(&before, refreshed, links_changed).await?;
    }
    run.stop();
    Ok(())
}

/// The loop's state between events: the WANs as last seen, what was installed, and what the
/// periodic work counts.
struct Running<'a> {
    nl: &'a Netlink,
    shared: &'a Shared,
    config: &'a Config,
    wans: Vec<WanView>,
    installed: &'a mut Installed,
    lans: Vec<LanView>,
    probers: &'a mut Probers,
    failover: &'a mut Failover,
    in_use: Vec<bool>,
    last_counters: Vec<(u64, u64)>,
    last_sample: tokio::time::Instant,
    gc_passes: u64,
    ticks: u64,
}

impl Running<'_> {
    /// Every second: throughput, links, and the effective weights; whether anything the
    /// dataplane sees changed.
    async fn tick(&mut self) -> bool {
        sample_rates(
            self.shared,
            &self.wans,
            &mut self.last_counters,
            &mut self.last_sample,
        );
        let changed = refresh_links(self.nl, &mut self.wans).await;
        self.ticks += 1;
        let weights_changed = follow_weights(self.shared, &mut self.wans, self.config, self.ticks);
        changed || weights_changed
    }

    /// The main routing table's mirror, refreshed if marked dirty.
    async fn poll_routes(&mut self) {
        let routing = &mut self.installed.routing;
        routing.poll(self.nl, &self.shared.maps, &self.wans).await;
        let shared = self.shared;
        shared
            .routes_mirrored
            .store(routing.routes_mirrored(), Ordering::Relaxed);
        shared
            .neighbours_mirrored
            .store(routing.neighbours_mirrored(), Ordering::Relaxed);
    }

    /// Resets the TCP connections of WANs whose failover grace ended.
    fn reset_ended(&mut self) {
        for (wan_id, sent) in self.failover.reset_ended(&self.shared.maps, &self.wans) {
            self.shared.failover_resets[usize::from(wan_id)].fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// Collects expired connections (and, every few passes, orphans).
    fn collect(&mut self) -> Result<()> {
        self.gc_passes += 1;
        let scan_orphans = self.gc_passes.is_multiple_of(conntrack::ORPHAN_SCAN_EVERY);
        let report = conntrack::collect(
            &mut lock(&self.shared.maps),
            &self.config.timeouts,
            conntrack::monotonic_ns(),
            scan_orphans,
        )?;
        *lock(&self.shared.gc) = report;
        Ok(())
    }

    /// After links were re-read (`refreshed`) or probe results came: follows re-created and
    /// re-addressed ports, settles each WAN's state, and writes what changed.
    async fn react(
        &mut self,
        before: &[relink::Before],
        refreshed: bool,
        links_changed: bool,
    ) -> Result<()> {
        // After every link refresh: a WAN waiting for its gateway may get one without a
        // link event.
        let restart = if refreshed {
            self.follow_ports(before).await
        } else {
            Vec::new()
        };
        for &i in &restart {
            let wan = &self.wans[i];
            self.probers.forget(wan.wan_id as usize);
            self.installed.manage((wan.info.ifindex, wan.gateway));
        }
        let links_changed = links_changed || !restart.is_empty();
        if refreshed {
            // A route, address, link or neighbour event, or WANs re-created or with new
            // gateways: the mirror is refreshed at its next poll.
            self.installed.routing.mark_dirty();
        }
        if links_changed {
            self.ensure_probers();
        }
        let states_changed = self.settle().await;
        if states_changed || links_changed {
            self.write().await?;
        }
        if states_changed && !self.wans.iter().any(|w| w.up) {
            log::warn!("no WAN is up: traffic from the LAN is dropped until one returns");
        }
        Ok(())
    }

    /// LANs and WANs re-created or re-addressed; the WANs (by index) whose probers must
    /// start afresh.
    async fn follow_ports(&mut self, before: &[relink::Before]) -> Vec<usize> {
        let (nl, shared, config) = (self.nl, self.shared, self.config);
        let mut ports = self.installed.ports();
        let renumbered = relink::follow_lans(nl, shared, &mut ports, config, &mut self.lans).await;
        for i in renumbered {
            let lan = &self.lans[i];
            if let Some(g) = self.installed.guard.as_mut()
                && let Err(e) = g.renumber(&lan.name, lan.net)
            {
                log::warn!("LAN {}: {e:#}", lan.name);
            }
        }
        let mut ports = self.installed.ports();
        relink::follow(nl, shared, &mut ports, config, before, &mut self.wans).await
    }

    /// A prober for every WAN, on its current interface and address.
    fn ensure_probers(&mut self) {
        for wan in &self.wans {
            if let Err(e) = self.probers.ensure(
                wan.wan_id as usize,
                &wan.name,
                wan_addr(wan),
                probe_ident(wan.wan_id, self.config.nat_ports.min),
            ) {
                log::warn!("WAN {}: {e:#}", wan.name);
            }
        }
    }

    /// Each WAN's state from its link and health; whether one changed.
    async fn settle(&mut self) -> bool {
        let mut states_changed = false;
        let mut resolve = Vec::new();
        {
            let mut health = lock(&self.shared.health);
            for wan in self.wans.iter_mut() {
                let h = &mut health[wan.wan_id as usize];
                if wan.up && !wan.link_ok {
                    h.force_down(self.shared.clock.now_ms());
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
        self.failover.follow(&self.wans);
        for (ifindex, gateway) in resolve {
            let _ = self.nl.del_neighbour(ifindex, gateway).await;
            if let Err(e) = self.nl.add_managed_neighbour(ifindex, gateway).await {
                log::warn!("{e:#}");
            }
        }
        states_changed
    }

    /// The WANs and slot tables into the maps, the views for the endpoint, and the default
    /// routes when the WANs in use changed.
    async fn write(&mut self) -> Result<()> {
        {
            let maps = &mut lock(&self.shared.maps);
            weights::apply(maps, &self.wans, &self.shared.policies, self.config.method)?;
            *lock(&self.shared.wans) = self.wans.clone();
        }
        // On a change of the WANs in use: up/down, or a quota turning a WAN into a backup
        // (a least-loaded weight update changes neither).
        let now_in_use: Vec<bool> = self.wans.iter().map(wan::in_use(&self.wans)).collect();
        if now_in_use != self.in_use {
            self.installed.routes.follow(self.nl, &self.wans).await;
            self.in_use = now_in_use;
        }
        Ok(())
    }

    /// On a stop: the quota usage to disk.
    fn stop(&self) {
        if let Some(meter) = lock(&self.shared.quota).as_ref()
            && let Err(e) = meter.save()
        {
            log::warn!("{e:#}");
        }
        log::info!(
            "stopping: detaching from {}",
            self.config.interfaces().join(",")
        );
    }
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
