//! UDP request/response and ICMP echo through pcc.

use pcc_tests::{Lab, require_root, wan_of_addr};

#[test]
fn udp_echo_and_ping() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let _pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");

    for (i, client) in lab.client_names().iter().enumerate() {
        let server = lab.server_addr(i);
        let r = lab
            .udp_probe(client, server, 7, 0, 5)
            .unwrap_or_else(|e| panic!("{client}: UDP echo via pcc: {e:#}"));
        assert_eq!(r.from, format!("{server}:7"), "{client}: reply source");
        let seen = r.seen_addr().expect("echo payload is ip:port");
        assert!(
            wan_of_addr(seen).is_some(),
            "{client}: server saw {} (expected a WAN address)",
            r.seen_as
        );
    }
    for (i, client) in lab.client_names().iter().enumerate() {
        let server = lab.server_addr(10 + i);
        let got = lab.ping(client, server, 5).expect("ping");
        assert!(
            got >= 3,
            "{client}: ping {server} through pcc: {got}/5 replies"
        );
    }
}
