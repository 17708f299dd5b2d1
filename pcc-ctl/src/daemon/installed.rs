//! What `pcc-ctl up` put into the kernel, owned in one place that also takes it out again:
//! the pinned programs and maps (their pins, then our handles: the programs detach), the
//! offloads turned off, the forwarding guard, demoted default routes, the route next hops and
//! gateway neighbour entries kept resolved.
//!
//! `teardown` undoes all of it on every exit of a started run (a stop, a failed start, an
//! error in the loop). Should a panic unwind past it instead, `Drop` still takes out what
//! needs no netlink (pins, programs, offloads, guard); `pcc-ctl down` restores the routes.
use std::net::Ipv4Addr;

use super::relink::Ports;
use crate::kernel::{
    dataplane::Dataplane,
    default_routes::DefaultRoutes,
    guard::ForwardGuard,
    netlink::Netlink,
    offload::{self, Offloads},
    pin::Pins,
    routes::Routing,
};

pub(super) struct Installed {
    pub(super) pins: Pins,
    /// `None` once torn down (dropping it closes our handles).
    dataplane: Option<Dataplane>,
    /// Turned off by us, or by a killed controller before us: turned back on at exit.
    offloads: Offloads,
    /// The forwarding guard, which names the LAN subnets.
    pub(super) guard: Option<ForwardGuard>,
    pub(super) routes: DefaultRoutes,
    /// The main routing table's mirror and the route next hops kept resolved.
    pub(super) routing: Routing,
    /// Gateway neighbour entries we asked the kernel to keep resolved, also those of WANs
    /// re-created or re-addressed while running.
    pub(super) managed: Vec<(u32, Ipv4Addr)>,
    torn_down: bool,
}

impl Installed {
    pub(super) fn new(
        pins: Pins,
        dataplane: Dataplane,
        offloads: Offloads,
        routing: Routing,
    ) -> Self {
        Self {
            pins,
            dataplane: Some(dataplane),
            offloads,
            guard: None,
            routes: DefaultRoutes::default(),
            routing,
            managed: Vec::new(),
            torn_down: false,
        }
    }

    /// What attaching to an interface takes: the programs, their pins, the offloads.
    pub(super) fn ports(&mut self) -> Ports<'_> {
        let Self {
            pins,
            dataplane,
            offloads,
            ..
        } = self;
        Ports {
            dataplane: dataplane
                .as_mut()
                .expect("the dataplane is installed until teardown"),
            pins,
            offloads,
        }
    }

    /// A gateway's neighbour entry to remove at exit (once).
    pub(super) fn manage(&mut self, gateway: (u32, Ipv4Addr)) {
        if !self.managed.contains(&gateway) {
            self.managed.push(gateway);
        }
    }

    /// Leaves nothing: removing the link pins, then closing our handles, detaches the
    /// programs; the offloads, guard, routes and neighbour entries are restored.
    pub(super) async fn teardown(mut self, nl: &Netlink) {
        self.undo_local();
        self.routes.restore_all(nl).await;
        self.routing.release_all(nl).await;
        for (ifindex, gateway) in std::mem::take(&mut self.managed) {
            if let Err(e) = nl.del_neighbour(ifindex, gateway).await {
                log::warn!("{e:#}");
            }
        }
    }

    /// What needs no netlink, once.
    fn undo_local(&mut self) {
        if std::mem::replace(&mut self.torn_down, true) {
            return;
        }
        self.pins.remove_all();
        drop(self.dataplane.take());
        self.offloads.restore_all(offload::ifindex_of);
        if let Some(g) = self.guard.take() {
            g.remove();
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.undo_local();
    }
}
