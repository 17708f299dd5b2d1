//! The gateway is replaced by one with another MAC (a new modem) and sends no gratuitous ARP:
//! the kernel's entry still says "reachable" with the old MAC, probes go nowhere, the WAN goes
//! down, and pcc-ctl resolves the gateway afresh so the WAN comes back within seconds instead
//! of after the kernel's minute-long reachable time.

use std::time::Duration;

use pcc_tests::{
    Lab,
    health::{wait_wan_state, wait_wans_up},
    require_root,
};

#[test]
fn a_new_gateway_mac_is_learnt_after_a_failure() {
    require_root!();
    let lab = Lab::with(1, 2);
    lab.start_udp_echo().expect("UDP echo");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");

    let ns = lab.ns("isp0");
    let out = std::process::Command::new("ip")
        .args([
            "-n",
            &ns,
            "link",
            "set",
            "up0",
            "address",
            "02:00:00:00:00:42",
        ])
        .output()
        .expect("ip");
    assert!(out.status.success(), "changing isp0's MAC: {out:?}");
    wait_wan_state(&pcc, "wan0", false, Duration::from_secs(3))
        .expect("wan0 down while the old MAC is used");
    wait_wan_state(&pcc, "wan0", true, Duration::from_secs(8))
        .expect("wan0 back with the new MAC within 8 s");
    let neigh = lab
        .run("router", &["ip", "neigh", "show", "dev", "wan0"])
        .expect("ip neigh");
    assert!(
        neigh.contains("02:00:00:00:00:42"),
        "router's entry for the gateway: {neigh}"
    );

    // The dataplane uses the new MAC too: a new flow hashed onto wan0 gets answers.
    let answered = (0..lab.server_count()).any(|i| {
        lab.udp_probe("c1", lab.server_addr(i), 7, 6000 + i as u16, 3)
            .is_ok_and(|r| r.seen_addr() == Some(lab.wan_addr(0)))
    });
    assert!(
        answered,
        "no flow through wan0 answered after the MAC change"
    );
}

/// A gateway's ARP entry that fails a re-verification (on a lossy line every ARP probe of one
/// can be lost) is no proof the gateway is gone: the WAN keeps its MAC and stays up, its
/// probes keep answering, and nothing flaps.
#[test]
fn a_failed_arp_entry_alone_does_not_take_the_wan_down() {
    require_root!();
    let lab = Lab::with(1, 2);
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
    let gateway = lab.isp_addr(0).to_string();
    for _ in 0..3 {
        lab.run(
            "router",
            &[
                "ip", "neigh", "change", &gateway, "dev", "wan0", "nud", "failed",
            ],
        )
        .expect("failing the gateway's entry");
        std::thread::sleep(Duration::from_millis(1500));
    }
    let m = pcc.metrics().unwrap();
    assert_eq!(m.get("pcc_wan_up", &[("wan", "wan0")]), Some(1.0));
    assert_eq!(
        m.get("pcc_wan_state_changes_total", &[("wan", "wan0")]),
        Some(0.0),
        "wan0 flapped on a failed ARP entry"
    );
}
