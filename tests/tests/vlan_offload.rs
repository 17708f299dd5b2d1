//! rx-vlan-offload hides a frame's 802.1Q tag from XDP (the NIC strips it into the packet's
//! metadata), so tagged frames would pass for untagged ones of the port's own network: pcc turns
//! it off on its ports while it runs and back on when it exits, or through `pcc-ctl down` after
//! a kill. With the tag left in the frame, a tagged frame from the LAN goes to the kernel
//! (`not_ipv4`) and is never translated. (This kernel has no 802.1Q module, so no VLAN
//! interface receives it there.)

use std::time::Duration;

use pcc_tests::{Lab, require_root, services_python};

const PORTS: [&str; 3] = ["lan0", "wan0", "wan1"];

/// Sends 5 tagged UDP datagrams; argv: interface, router MAC, client address, server.
const TAGGED_PY: &str = r#"
import sys
from scapy.all import Ether, Dot1Q, IP, UDP, Raw, sendp, conf
conf.verb = 0
iface, mac, me, srv = sys.argv[1:5]
sendp(Ether(dst=mac) / Dot1Q(vlan=10) / IP(src=me, dst=srv) / UDP(sport=7777, dport=7) / Raw(b"tagged"),
      iface=iface, count=5, inter=0.01)
"#;

/// `rx-vlan-offload` of lan0, wan0, wan1.
fn rxvlan(lab: &Lab) -> Vec<bool> {
    lab.ethtool_feature("router", &PORTS, "rx-vlan-offload")
        .unwrap()
}

fn all(lab: &Lab, on: bool) -> bool {
    rxvlan(lab).iter().all(|o| *o == on)
}

#[test]
fn rx_vlan_offload_is_off_while_pcc_runs_and_tagged_frames_go_to_the_kernel() {
    require_root!();
    let lab = Lab::with(1, 1);
    lab.start_udp_echo().expect("UDP echo server");
    assert!(
        all(&lab, true),
        "veth starts with rxvlan on: {:?}",
        rxvlan(&lab)
    );

    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    assert!(all(&lab, false), "while pcc runs: {:?}", rxvlan(&lab));
    let before = pcc.metrics().expect("metrics");
    let echoed = lab.udp_log().unwrap().len();
    let script = lab.dir().join("tagged.py");
    std::fs::write(&script, TAGGED_PY).unwrap();
    lab.run(
        "switch",
        &[
            services_python(),
            &script.to_string_lossy(),
            "p-lan",
            &lab.mac("router", "lan0").unwrap(),
            &lab.client_addr(1).to_string(),
            &lab.server_addr(0).to_string(),
        ],
    )
    .expect("sending tagged frames with scapy");
    std::thread::sleep(Duration::from_millis(500));
    let after = pcc.metrics().expect("metrics");
    let not_ipv4 = |m: &pcc_tests::Metrics| {
        m.get("pcc_packets_total", &[("reason", "not_ipv4")])
            .unwrap_or(0.0)
    };
    assert!(
        not_ipv4(&after) - not_ipv4(&before) >= 5.0,
        "tagged frames counted not_ipv4: {} -> {}",
        not_ipv4(&before),
        not_ipv4(&after)
    );
    assert_eq!(
        lab.udp_log().unwrap().len(),
        echoed,
        "a tagged frame reached the server"
    );
    // Untagged traffic is served as before.
    lab.udp_probe("c1", lab.server_addr(0), 7, 0, 3)
        .expect("UDP through pcc");

    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    assert!(all(&lab, true), "after exit: {:?}", rxvlan(&lab));

    // Killed, it cannot turn them back on: `pcc-ctl down` does, from its record.
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl again");
    assert!(all(&lab, false), "while pcc runs: {:?}", rxvlan(&lab));
    pcc.kill();
    assert!(all(&lab, false), "after a kill: {:?}", rxvlan(&lab));
    let (ok, said) = lab.pcc_down().unwrap();
    assert!(ok, "{said}");
    assert!(said.contains("turned back on: lan0 rxvlan"), "{said}");
    assert!(all(&lab, true), "after `pcc-ctl down`: {:?}", rxvlan(&lab));
    assert_eq!(lab.leftover_attachments().unwrap(), None);
}
