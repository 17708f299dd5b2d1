//! Full tables under a storm: a LAN host floods new UDP connections at 50 000 packets/s (the
//! XDP live-frames generator, 6400 distinct flows, bounded in count and time) into a pcc
//! whose conntrack holds 2048 connections. pcc keeps running, makes room for the storm's
//! new flows by dropping its older unanswered ones (early drop), an existing answered
//! connection keeps its translation throughout, and new connections open after the storm.

use std::time::{Duration, Instant};

use pcc_tests::{Lab, health, require_root};

/// 150 000 frames at 50 000/s from c2 into lan0: 6400 distinct UDP flows (203.0.113.10–59,
/// 128 source ports each) to port 9.
fn storm(lab: &Lab) -> pcc_tests::LabProcess {
    let bench = pcc_tests::pcc_ctl_path()
        .unwrap()
        .with_file_name("pcc-bench");
    let (lan_mac, c2_mac) = (
        lab.mac("router", "lan0").unwrap(),
        lab.mac("c2", "eth0").unwrap(),
    );
    let c2 = lab.client_addr(2).to_string();
    lab.spawn(
        "switch",
        &[
            &bench.to_string_lossy(),
            "generate",
            "p-lan",
            "--count",
            "150000",
            "--rate",
            "50000",
            "--seconds",
            "10",
            "--src-mac",
            &c2_mac,
            "--dst-mac",
            &lan_mac,
            "--src",
            &c2,
            "--dport",
            "9",
        ],
    )
    .expect("storm generator")
}

#[test]
fn a_connection_storm_fills_the_table_and_spares_existing_connections() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let mut pcc = lab
        .start_pcc(&["--max-connections", "2048", "--udp-timeout", "4"])
        .expect("starting pcc-ctl");
    let server = lab.server_addr(0);
    let flow = lab.udp_probe("c1", server, 7, 5600, 5).expect("UDP flow");

    let storm = storm(&lab);
    // The existing connection, refreshed during the storm so it never idles out.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let r = lab
            .udp_probe("c1", server, 7, 5600, 3)
            .expect("existing flow during the storm");
        assert_eq!(r.seen_as, flow.seen_as, "translation changed in the storm");
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = storm.finish(Duration::from_secs(15));
    assert!(
        out.status.success(),
        "generator: {}",
        pcc_tests::proc::describe(&out)
    );
    assert!(pcc.is_running(), "pcc-ctl survived the storm");
    let m = pcc.metrics().expect("metrics");
    // The table fills within the first 2048 flows; from then on each new flow makes room by
    // dropping an older one that never got a reply (early drop), so the storm keeps opening
    // connections and the answered one in front of it stays.
    let early = m
        .get("pcc_conntrack_events_total", &[("event", "early_dropped")])
        .unwrap_or(0.0);
    assert!(
        early > 1000.0,
        "the table filled and unanswered connections made room: {early}"
    );
    let created = m.sum("pcc_flows_created_total");
    assert!(
        created > 2048.0 + 1000.0,
        "connections kept opening in a full table: {created}"
    );

    // Recovery: the storm's entries idle out and new connections open again.
    health::wait_until(
        "a new connection after the storm",
        Duration::from_secs(20),
        Duration::ZERO,
        || Ok(lab.udp_probe("c1", server, 7, 5601, 1).ok()),
    )
    .expect("recovery after the storm");
    let r = lab
        .udp_probe("c1", server, 7, 5600, 3)
        .expect("old flow after");
    assert_eq!(r.seen_as, flow.seen_as, "translation kept after the storm");
}

/// With 64 NAT ports, the storm's 128 source ports find 64 public ports at most (a port is one
/// LAN endpoint's, RFC 4787 REQ-1): the rest are dropped and counted as `nat_ports_exhausted`,
/// answered no faster than the ICMP rate limit, and a LAN endpoint that has its mapping keeps
/// it and reaches other remote endpoints with it.
#[test]
fn nat_ports_running_out_towards_one_endpoint_drop_only_those_connections() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let mut pcc = lab
        // One WAN per host, so the endpoint's one mapping is what every server sees.
        .start_pcc(&["--nat-ports", "61000-61063", "--classifier", "src-address"])
        .expect("starting pcc-ctl");
    let server = lab.server_addr(0);
    let flow = lab.udp_probe("c1", server, 7, 5700, 5).expect("UDP flow");
    let out = storm(&lab).finish(Duration::from_secs(15));
    assert!(
        out.status.success(),
        "generator: {}",
        pcc_tests::proc::describe(&out)
    );
    assert!(pcc.is_running(), "pcc-ctl survived");
    let m = pcc.metrics().expect("metrics");
    let exhausted = m
        .get("pcc_drops_total", &[("reason", "nat_ports_exhausted")])
        .unwrap_or(0.0);
    assert!(exhausted > 1000.0, "port shortage counted: {exhausted}");
    // Each refusal is answered "administratively prohibited" or, past the rate limit (1000 a
    // second per CPU after a burst of 50), only dropped: about 75 000 refusals in 3 s.
    let answers = |outcome| {
        m.get("pcc_icmp_prohibited_total", &[("outcome", outcome)])
            .unwrap_or(0.0)
    };
    let (sent, limited) = (answers("sent"), answers("rate_limited"));
    assert!(
        sent > 0.0 && sent + limited == exhausted && sent < exhausted / 4.0,
        "{exhausted} refusals: {sent} answered, {limited} rate-limited"
    );
    let r = lab
        .udp_probe("c1", server, 7, 5700, 3)
        .expect("existing flow");
    assert_eq!(r.seen_as, flow.seen_as, "existing translation kept");
    // With endpoint-independent mapping a port belongs to one LAN endpoint, so 64 ports hold
    // 64 endpoints; an endpoint that has its mapping opens connections to anyone with it.
    let other = lab.server_addr(1);
    let r = lab
        .udp_probe("c1", other, 7, 5700, 3)
        .expect("a new connection to another endpoint still opens");
    assert_eq!(r.seen_as, flow.seen_as, "with the endpoint's one mapping");
}
