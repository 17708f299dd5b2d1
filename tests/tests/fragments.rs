//! Datagrams bigger than the path MTU travel as IP fragments: a 4 KB UDP datagram each way
//! (a request echoed back whole) and a 4 KB ping cross pcc intact. The kernel's forwarding
//! is off in this lab, so every fragment went through pcc's own translation.

use pcc_tests::{Lab, require_root};

#[test]
fn fragmented_udp_and_ping_cross_whole_both_ways() {
    require_root!();
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_udp_echo().expect("UDP echo server");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let server = lab.server_addr(0);
    for (i, size) in [4000usize, 8000].into_iter().enumerate() {
        let sport = 5100 + i as u16;
        let r = lab
            .udp_echo("c1", server, 7, sport, 5, size)
            .unwrap_or_else(|e| panic!("{size}-byte UDP echo: {e:#}"));
        let seen = r.seen_addr().expect("server saw an address");
        assert!(
            pcc_tests::wan_of_addr(seen).is_some(),
            "the server saw {seen}, not a WAN address"
        );
    }
    let log = lab.udp_log().expect("udp log");
    assert!(
        log.iter().any(|e| e.len == 4005) && log.iter().any(|e| e.len == 8005),
        "the server got the datagrams whole: {log:?}"
    );
    let out = lab
        .run(
            "c1",
            &[
                "ping",
                "-c",
                "2",
                "-s",
                "4000",
                "-W",
                "2",
                &server.to_string(),
            ],
        )
        .expect("4 KB ping through pcc");
    assert!(out.contains(" 0% packet loss"), "{out}");
    let m = pcc.metrics().expect("metrics");
    assert_eq!(
        m.get("pcc_drops_total", &[("reason", "fragment_untracked")]),
        Some(0.0),
        "no fragment went untranslated"
    );
}
