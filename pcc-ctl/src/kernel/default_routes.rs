//! The router's own default routes follow the WANs in use: a dead WAN's (or a backup's while a
//! primary is up) are demoted, and restored when it is in use again and on exit.
use std::collections::HashMap;

use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage};

use crate::{
    balance::wan::{WanView, in_use},
    kernel::netlink::Netlink,
};

/// Added to a dead WAN's default-route metrics: the router's own traffic then prefers a live
/// WAN, while the dead WAN keeps a route of its own for its health probes (they are bound to
/// the WAN, and need a route through it to reach targets beyond the gateway).
const DEMOTED_METRIC: u32 = 1_000_000;

fn metric(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

fn with_metric(route: &RouteMessage, metric: u32) -> RouteMessage {
    let mut r = route.clone();
    r.attributes
        .retain(|a| !matches!(a, RouteAttribute::Priority(_)));
    r.attributes.push(RouteAttribute::Priority(metric));
    r
}

/// Keeps the router's own default route on a WAN in use: the default routes of a WAN that is
/// dead, or a backup while a primary is up, are demoted (metric + 1000000) while another WAN
/// is in use, and restored when it is in use again, when no WAN is (nothing better to offer)
/// and on exit. So the router's DNS, NTP and tunnels go where the LAN's new connections go.
#[derive(Default)]
pub struct DefaultRoutes {
    /// The original routes of each demoted WAN.
    demoted: HashMap<u8, Vec<RouteMessage>>,
}

impl DefaultRoutes {
    /// Takes over the demoted routes a previous controller left (it was killed before it
    /// could restore them): each is recorded with its original metric, so `follow` and
    /// `restore_all` put it back. `wans` are (`wan_id`, ifindex) pairs.
    pub async fn adopt(&mut self, nl: &Netlink, wans: &[(u8, u32)]) {
        for &(wan_id, ifindex) in wans {
            let Ok(routes) = nl.default_routes(ifindex).await else {
                continue;
            };
            for route in routes.into_iter().filter(|r| metric(r) >= DEMOTED_METRIC) {
                let original = with_metric(&route, metric(&route) - DEMOTED_METRIC);
                self.demoted.entry(wan_id).or_default().push(original);
            }
        }
    }

    pub async fn follow(&mut self, nl: &Netlink, wans: &[WanView]) {
        let in_use = in_use(wans);
        let any_in_use = wans.iter().any(&in_use);
        for wan in wans {
            if in_use(wan) || !any_in_use {
                self.restore(nl, wan.wan_id).await;
                continue;
            }
            let routes = match nl.default_routes(wan.info.ifindex).await {
                Ok(routes) => routes,
                Err(e) => {
                    log::warn!("WAN {}: {e:#}", wan.name);
                    continue;
                }
            };
            for route in routes.into_iter().filter(|r| metric(r) < DEMOTED_METRIC) {
                let demoted = with_metric(&route, metric(&route).saturating_add(DEMOTED_METRIC));
                let result = async {
                    nl.add_route(demoted).await?;
                    nl.del_route(route.clone()).await
                };
                match result.await {
                    Ok(()) => self.demoted.entry(wan.wan_id).or_default().push(route),
                    Err(e) => {
                        log::warn!("WAN {}: cannot demote its default route: {e:#}", wan.name);
                    }
                }
            }
        }
    }

    async fn restore(&mut self, nl: &Netlink, wan_id: u8) {
        for route in self.demoted.remove(&wan_id).unwrap_or_default() {
            let demoted = with_metric(&route, metric(&route).saturating_add(DEMOTED_METRIC));
            if let Err(e) = nl.add_route(route).await {
                log::warn!("{e:#}");
            }
            // Gone already if the link went away with it.
            let _ = nl.del_route(demoted).await;
        }
    }

    /// Routes currently demoted (recorded by `follow` or `adopt`).
    pub fn demoted_count(&self) -> usize {
        self.demoted.values().map(Vec::len).sum()
    }

    pub async fn restore_all(&mut self, nl: &Netlink) {
        let ids: Vec<u8> = self.demoted.keys().copied().collect();
        for id in ids {
            self.restore(nl, id).await;
        }
    }
}
