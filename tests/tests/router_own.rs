//! The router's own sockets on a WAN and the LAN hosts' mappings never steal each other's
//! replies (issue 12): the NAT range is whole, so a host's source port is kept even inside
//! Linux's ephemeral range, and the TC egress hook on the WAN records the router's own tuples
//! so no mapping takes one. One WAN, so the router's kernel route and the hosts' mappings share
//! its address and the ports really collide.

use std::time::Duration;

use pcc_tests::{Lab, PccHandle, require_root};

/// Inside Linux's ephemeral range (32768-60999), where the router's sockets and most hosts'
/// pick their ports.
const PORT: u16 = 40000;

fn counter(pcc: &PccHandle, name: &str, reason: &str) -> f64 {
    pcc.metrics()
        .expect("metrics")
        .get(name, &[("reason", reason)])
        .unwrap_or(0.0)
}

/// A UDP socket of the router (a resolver with its own port) talks to a server first; a LAN
/// host then sends from the same port to the same server port. The host gets another NAT port,
/// and both keep getting their own replies. A host that holds a tuple first keeps it: the
/// router's packet on it stays in, counted.
#[test]
fn router_udp_socket_and_lan_host_on_the_same_port() {
    require_root!();
    let lab = Lab::with(2, 2);
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&["--wan", "wan0"]).expect("starting pcc-ctl");
    let server = lab.server_addr(0);
    let router_tuple = format!("{}:{PORT}", lab.wan_addr(0));

    let router = lab
        .udp_probe("router", server, 7, PORT, 3)
        .expect("the router's own socket");
    assert_eq!(router.seen_as, router_tuple, "the router's socket, unNATed");
    let host = lab
        .udp_probe("c1", server, 7, PORT, 3)
        .expect("c1 from the router's port");
    for _ in 0..2 {
        let again = lab.udp_probe("router", server, 7, PORT, 3).expect(
            "the router's socket again: its replies went to c1's mapping on the same tuple",
        );
        assert_eq!(again.seen_as, router_tuple);
        let again = lab.udp_probe("c1", server, 7, PORT, 3).expect("c1 again");
        assert_eq!(again.seen_as, host.seen_as, "c1 keeps its mapping");
    }
    assert_ne!(
        host.seen_as, router_tuple,
        "c1 was given the router's own tuple"
    );
    assert!(counter(&pcc, "pcc_packets_total", "router_own") >= 3.0);
    assert!(counter(&pcc, "pcc_packets_total", "router_own_out") >= 3.0);

    // The other order: c2's mapping keeps its own port, and the router's packet on that tuple
    // would have its replies go to c2.
    let held = lab
        .udp_probe("c2", server, 7, PORT + 1, 3)
        .expect("c2 first");
    assert_eq!(held.seen_port(), Some(PORT + 1), "c2 keeps its port");
    assert!(
        lab.udp_probe("router", server, 7, PORT + 1, 2).is_err(),
        "the router's packet on c2's tuple left"
    );
    assert!(counter(&pcc, "pcc_drops_total", "router_tuple_taken") >= 1.0);
    let again = lab
        .udp_probe("c2", server, 7, PORT + 1, 3)
        .expect("c2 again");
    assert_eq!(again.seen_as, held.seen_as);
}

/// The router's own TCP connection (curl on the router, pinned to a source port) and a LAN
/// host's download from the same port to the same server, at the same time: both arrive whole.
#[test]
fn router_tcp_connection_and_lan_download_on_the_same_port() {
    require_root!();
    let lab = Lab::with(1, 1);
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(2 << 20).expect("test file");
    let _pcc = lab.start_pcc(&["--wan", "wan0"]).expect("starting pcc-ctl");
    // 2 MiB at 1 MB/s: the two connections overlap for about two seconds.
    let url = format!("{}?rate=1000000", lab.url(lab.server_addr(0), &file));
    let port = (PORT + 100).to_string();
    let pinned = ["--local-port", port.as_str()];
    std::thread::scope(|s| {
        let router = s.spawn(|| lab.download_url("router", &url, &pinned));
        std::thread::sleep(Duration::from_millis(500));
        let host = lab
            .download_url("c1", &url, &pinned)
            .expect("c1's download");
        assert_eq!(host.sha256, file.sha256, "c1's download");
        let router = router
            .join()
            .expect("router thread")
            .expect("the router's own download");
        assert_eq!(router.sha256, file.sha256, "the router's own download");
        assert_eq!(router.local_port, PORT + 100);
    });
}
