//! With `net.ipv4.ip_forward=1` the kernel forwards what the XDP path passes up. A UDP
//! datagram with IP options (passed up: the fast path does not translate options) must still
//! leave a WAN from a WAN address, because pcc's nftables guard masquerades it; without the
//! guard it leaks the LAN address (the control run: the lab's ISPs refuse it, BCP 38). The
//! guard's table exists while pcc runs and is gone after it exits.

use pcc_tests::{Lab, require_root};

/// Sends one UDP datagram with IP options (three NOPs and an end-of-list) with scapy.
const SEND_WITH_OPTIONS_PY: &str = r#"
import sys
from scapy.all import IP, UDP, IPOption_NOP, IPOption_EOL, send, conf
conf.verb = 0
dst, sport = sys.argv[1], int(sys.argv[2])
opts = [IPOption_NOP(), IPOption_NOP(), IPOption_NOP(), IPOption_EOL()]
send(IP(dst=dst, ttl=64, options=opts) / UDP(sport=sport, dport=7) / b"with options", count=3, inter=0.2)
"#;

/// Where the echo server saw the datagrams from `sport` come from, and how many packets with a
/// LAN source the ISPs saw (and refused).
fn sources_seen(lab: &Lab, pcc_args: &[&str], sport: u16) -> (Vec<std::net::Ipv4Addr>, u64) {
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(pcc_args).expect("starting pcc-ctl");
    let script = lab.dir().join("options.py");
    std::fs::write(&script, SEND_WITH_OPTIONS_PY).unwrap();
    let server = lab.server_addr(0).to_string();
    lab.run(
        "c1",
        &[
            pcc_tests::services_python(),
            &script.to_string_lossy(),
            &server,
            &sport.to_string(),
        ],
    )
    .expect("sending with scapy");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let m = pcc.metrics().expect("metrics");
    assert!(
        m.get("pcc_packets_total", &[("reason", "ip_options")])
            .unwrap_or(0.0)
            >= 3.0,
        "the XDP path passed the datagrams with options to the kernel"
    );
    let tables = lab.run("router", &["nft", "list", "tables"]).unwrap();
    assert_eq!(
        tables.contains("pcc_guard_lan0"),
        !pcc_args.contains(&"--no-forward-guard"),
        "guard table while pcc runs: {tables}"
    );
    pcc.stop().expect("pcc-ctl stops");
    let tables = lab.run("router", &["nft", "list", "tables"]).unwrap();
    assert!(
        !tables.contains("pcc_guard"),
        "guard table left after exit: {tables}"
    );
    let seen = lab
        .udp_log()
        .expect("udp log")
        .iter()
        .filter(|e| e.client_port != 0 && e.len == "with options".len())
        .map(|e| e.client)
        .collect();
    let leaked = (0..2)
        .map(|i| lab.lan_source_packets(i).expect("ISP counters").0)
        .sum();
    (seen, leaked)
}

#[test]
fn kernel_forwarded_lan_traffic_leaves_masqueraded() {
    require_root!();
    let lab = Lab::builder()
        .ip_forward(true)
        .build()
        .expect("building the lab");
    let (seen, leaked) = sources_seen(&lab, &[], 5300);
    assert!(!seen.is_empty(), "the datagrams with options arrived");
    assert_eq!(leaked, 0, "the ISPs saw packets with a LAN source");
    for addr in &seen {
        assert!(
            pcc_tests::wan_of_addr(*addr).is_some(),
            "the server saw {addr}: a LAN address leaked"
        );
    }
}

/// The control: without the guard the same datagrams leave with the LAN address (and the
/// ISP refuses them), so the test above really exercises the guard.
#[test]
fn without_the_guard_the_lan_address_leaks() {
    require_root!();
    let lab = Lab::builder()
        .ip_forward(true)
        .build()
        .expect("building the lab");
    let (seen, leaked) = sources_seen(&lab, &["--no-forward-guard"], 5301);
    assert!(
        leaked >= 3,
        "expected the unguarded kernel to forward c1's own address to an ISP: {leaked} LAN-source packets there"
    );
    assert!(seen.is_empty(), "BCP 38: the ISP passed on {seen:?}");
}
