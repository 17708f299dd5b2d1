//! A LAN interface that disappears and comes back (a bridge restarted, a NIC replugged) is
//! followed like a WAN: pcc attaches its program to the new interface and LAN traffic flows
//! again within seconds, without a restart.

use std::time::Duration;

use pcc_tests::health::wait_until;
use pcc_tests::{LAN_GATEWAY, Lab, require_root};

#[test]
fn a_recreated_lan_carries_traffic_again() {
    require_root!();
    let lab = Lab::with(2, 4);
    lab.start_udp_echo().expect("UDP echo server");
    let mut pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    lab.udp_probe("c1", lab.server_addr(0), 7, 5600, 3)
        .expect("LAN traffic before");

    lab.run("router", &["ip", "link", "del", "lan0"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let sw = lab.ns("switch");
    lab.ip_batch(
        "router",
        &[
            format!("link add lan0 type veth peer name p-lan netns {sw}"),
            format!("addr add {LAN_GATEWAY}/24 dev lan0"),
            "link set lan0 up".into(),
        ],
    )
    .unwrap();
    lab.ip_batch("switch", &["link set p-lan master br0 up".into()])
        .unwrap();
    lab.sh("router", "ethtool -K lan0 tx off gro on >/dev/null")
        .unwrap();
    lab.sh("switch", "ethtool -K p-lan tx off gro on >/dev/null")
        .unwrap();

    // One probe a try (1 s each), for at most 10 s.
    let back = wait_until(
        "LAN traffic through the new lan0",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || Ok(lab.udp_probe("c2", lab.server_addr(1), 7, 5601, 1).ok()),
    );
    if let Err(e) = back {
        let (_, log) = pcc.output();
        panic!(
            "{e:#}\nXDP on: {:?}\npcc-ctl:\n{log}",
            lab.xdp_interfaces("router").unwrap_or_default()
        );
    }
    assert!(
        lab.xdp_interfaces("router")
            .unwrap()
            .iter()
            .any(|i| i == "lan0"),
        "the program is attached to the new lan0"
    );
    // The kernel does not forward (ip_forward=0): only pcc can have carried the reply.
    lab.udp_probe("c1", lab.server_addr(0), 7, 5600, 3)
        .expect("the first host's flow again");
}
