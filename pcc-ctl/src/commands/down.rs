//! `pcc-ctl down`: removes what a controller that did not exit cleanly left behind (pinned
//! maps and links, so the programs detach; the forwarding guard; demoted default routes; the
//! offloads it turned off).
//! Refused while a controller runs on those interfaces: it cleans up itself on SIGTERM.
use anyhow::Result;

use crate::kernel::{
    default_routes::DefaultRoutes,
    guard,
    lock::InterfaceLocks,
    netlink::Netlink,
    offload::{self, Offloads},
    pin::Pins,
};

/// `lans`: the `--lan` interfaces of the `pcc-ctl up` to remove (the first names its state).
pub async fn run(lans: &[String]) -> Result<()> {
    let first_lan = &lans[0];
    let _lock = InterfaceLocks::acquire(std::slice::from_ref(first_lan)).map_err(|e| {
        anyhow::anyhow!("{e:#}: stop that one with SIGTERM, which removes everything")
    })?;
    let pins = Pins::for_lan(first_lan);
    let state = pins.read_state()?;
    let mut done = Vec::new();
    if let Some(state) = &state {
        let nl = Netlink::connect()?;
        let mut wans = Vec::new();
        for (wan_id, name) in state.wans.iter().enumerate() {
            // A WAN that is gone has no routes left to restore.
            if let Ok(link) = nl.link(name).await {
                wans.push((wan_id as u8, link.ifindex));
            }
        }
        let mut routes = DefaultRoutes::default();
        routes.adopt(&nl, &wans).await;
        if routes.demoted_count() > 0 {
            done.push(format!(
                "restored {} demoted default route(s)",
                routes.demoted_count()
            ));
        }
        routes.restore_all(&nl).await;
    }
    let removed = pins.remove_all();
    if !removed.is_empty() {
        done.push(format!(
            "removed {} pin(s) in {} (programs detached)",
            removed.len(),
            pins.dir.display()
        ));
    }
    let restored = Offloads::open(first_lan)?.restore_all(offload::ifindex_of);
    if !restored.is_empty() {
        done.push(format!("turned back on: {}", restored.join(", ")));
    }
    if guard::remove_table(&guard::table_name(first_lan)) {
        done.push(format!(
            "removed nftables table ip {}",
            guard::table_name(first_lan)
        ));
    }
    if done.is_empty() {
        println!("pcc-ctl: nothing of pcc is left on {first_lan}");
    } else {
        println!("pcc-ctl: {}", done.join("; "));
    }
    Ok(())
}
