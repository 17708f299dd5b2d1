//! Two LAN clients use the same UDP source port towards the same server address and port:
//! both get their replies, the server sees two different (address, port) sources, and one of
//! them kept its port (source NAT keeps the original port when it is free).

use std::collections::BTreeSet;

use pcc_tests::{Lab, require_root};

/// No socket of the router's uses it towards the echo server.
const SPORT: u16 = 5000;

fn check(classifier: Option<&str>, clients: &[&str]) {
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let args: Vec<&str> = classifier
        .map(|c| vec!["--classifier", c])
        .unwrap_or_default();
    let _pcc = lab.start_pcc(&args).expect("starting pcc-ctl");
    let server = lab.server_addr(0);
    let mut seen = BTreeSet::new();
    for client in clients {
        let r = lab
            .udp_probe(client, server, 7, SPORT, 5)
            .unwrap_or_else(|e| panic!("{client}: UDP from port {SPORT}: {e:#}"));
        assert_eq!(r.local_port, SPORT);
        assert_eq!(r.from, format!("{server}:7"), "{client}: reply source");
        eprintln!("{client}:{SPORT} seen by the server as {}", r.seen_as);
        seen.insert(r.seen_as);
    }
    // The first client's mapping still works after the others took theirs.
    let again = lab
        .udp_probe(clients[0], server, 7, SPORT, 3)
        .expect("first client again");
    assert!(
        seen.contains(&again.seen_as),
        "{} changed its mapping to {}",
        clients[0],
        again.seen_as
    );
    assert_eq!(
        seen.len(),
        clients.len(),
        "clients sharing source port {SPORT} must be seen as different sources: {seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.ends_with(&format!(":{SPORT}"))),
        "no client kept port {SPORT}: {seen:?}"
    );
    let log = lab.udp_log().expect("udp log");
    let sources: BTreeSet<_> = log.iter().map(|e| (e.client, e.client_port)).collect();
    assert_eq!(
        sources.len(),
        clients.len(),
        "echo server log sources: {sources:?}"
    );
}

/// dst-address classifier: same destination, so both flows use the same WAN and their ports
/// really collide.
#[test]
fn same_source_port_same_wan() {
    require_root!();
    check(Some("dst-address"), &["c1", "c2"]);
}

/// Default classifier, three clients.
#[test]
fn same_source_port_default_classifier() {
    require_root!();
    check(None, &["c1", "c2", "c3"]);
}
