//! A WAN interface that disappears and comes back as a new interface with a new address and
//! a new gateway (a replugged USB modem, a new PPPoE session, a DHCP renewal) is followed
//! without a restart: pcc attaches to the new interface, learns the new gateway, NATs new
//! connections to the new address, and ends the connections of the old address cleanly (the
//! host's next packet starts afresh instead of leaving with an address the WAN lost).

use std::time::Duration;

use pcc_tests::{Lab, health, require_root};

const NEW_ADDR: &str = "198.18.2.3";
const NEW_GATEWAY: &str = "198.18.2.254";

#[test]
fn a_recreated_wan_is_relearned_without_a_restart() {
    require_root!();
    let lab = Lab::builder().servers(8).build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let mut pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    // A flow that leaves through wan1.
    let (server, old) = lab
        .server_addrs()
        .into_iter()
        .find_map(|s| {
            let r = lab.udp_probe("c1", s, 7, 5500, 3).ok()?;
            r.seen_as.starts_with("198.18.2.2:").then_some((s, r))
        })
        .expect("some server is reached through wan1");
    let egress_before = lab.egress_links().unwrap();

    lab.run("router", &["ip", "link", "del", "wan1"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let isp1 = lab.ns("isp1");
    lab.ip_batch(
        "router",
        &[
            format!("link add wan1 type veth peer name up0 netns {isp1}"),
            format!("addr add {NEW_ADDR}/24 dev wan1"),
            "link set wan1 up".into(),
        ],
    )
    .unwrap();
    lab.ip_batch(
        "isp1",
        &[
            format!("addr add {NEW_GATEWAY}/24 dev up0"),
            "link set up0 up".into(),
        ],
    )
    .unwrap();
    // isp1's new lease (BCP 38), on the new up0.
    lab.isp_lease(1, &[NEW_ADDR.parse().unwrap()])
        .expect("isp1 accepts the new address");
    lab.sh("router", "ethtool -K wan1 tx off gro on >/dev/null")
        .unwrap();
    lab.sh("isp1", "ethtool -K up0 tx off gro on >/dev/null")
        .unwrap();
    lab.run(
        "router",
        &[
            "ip",
            "route",
            "add",
            "default",
            "via",
            NEW_GATEWAY,
            "dev",
            "wan1",
            "metric",
            "200",
        ],
    )
    .unwrap();

    if let Err(e) = health::wait_wan_state(&pcc, "wan1", true, Duration::from_secs(15)) {
        let (_, log) = pcc.output();
        panic!("wan1 did not come back up: {e:#}; pcc-ctl said:\n{log}");
    }
    assert!(
        lab.xdp_interfaces("router")
            .unwrap()
            .iter()
            .any(|i| i == "wan1"),
        "the program is attached to the new wan1"
    );
    // The TC egress hook too: a fresh link on the new interface.
    let link_of = |links: &[(String, u64)]| links.iter().find(|(w, _)| w == "wan1").map(|l| l.1);
    let (old_link, new_link) = (
        link_of(&egress_before),
        link_of(&lab.egress_links().unwrap()),
    );
    assert!(
        old_link.is_some() && new_link.is_some() && new_link != old_link,
        "wan1's TC egress hook: {old_link:?} before, {new_link:?} after"
    );
    // The old flow's translation went with the old address: it starts afresh.
    let again = lab
        .udp_probe("c1", server, 7, 5500, 3)
        .expect("the old flow again");
    assert!(
        !again.seen_as.starts_with("198.18.2.2:"),
        "still translated to the lost address: {}",
        again.seen_as
    );
    // New connections leave wan1 from its new address, through its new gateway.
    let through_new = (0..40u16).any(|i| {
        lab.server_addrs().into_iter().any(|s| {
            lab.udp_probe("c2", s, 7, 6000 + i, 2)
                .is_ok_and(|r| r.seen_as.starts_with(&format!("{NEW_ADDR}:")))
        })
    });
    assert!(through_new, "no connection left through the new wan1");
    assert!(old.seen_as.starts_with("198.18.2.2:"));
    let (_, log) = pcc.output();
    assert!(log.contains("is a new interface"), "{log}");
    assert!(log.contains("gateway 198.18.2.1 -> 198.18.2.254"), "{log}");

    // The new gateway's entry was asked to stay resolved too: exit takes it back with the rest.
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    let neigh = lab.run("router", &["ip", "neigh", "show"]).unwrap();
    assert!(
        !neigh.contains("managed"),
        "managed neighbour entries left after exit:\n{neigh}"
    );
}
