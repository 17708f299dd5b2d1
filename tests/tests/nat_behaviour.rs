//! NAT behaviour in RFC 4787 / 5382 / 5508 terms, as a STUN client on a LAN host finds it
//! (RFC 5780 discovery with coturn's `turnutils_natdiscovery` against the lab's two-address
//! STUN server, see `pcc_tests::stun`), and hairpinning with plain UDP sockets.
//!
//! Every LAN socket uses a port in 32768-60999, Linux's ephemeral range: the ports real hosts
//! send from, and the ones pcc's NAT range used to leave out (issue 12). `--classifier
//! src-address` keeps a host on one WAN, so one public address for every peer is possible.

use std::time::Duration;

use pcc_tests::{
    Checks, Lab, PccHandle, require_root,
    stun::{Behaviour, NatTest, describe},
};

/// A lab of 2 clients and 4 servers with pcc-ctl `--classifier src-address` plus `extra`
/// (bind as `let (lab, _pcc)`: the controller stops before the lab goes).
fn lab_with_pcc(extra: &[&str]) -> (Lab, PccHandle) {
    let lab = Lab::builder()
        .clients(2)
        .servers(4)
        .build()
        .expect("building the lab");
    lab.start_stun().expect("STUN server");
    let mut args = vec!["--classifier", "src-address"];
    args.extend_from_slice(extra);
    let pcc = lab
        .start_pcc(&args)
        .unwrap_or_else(|e| panic!("starting pcc-ctl {extra:?}: {e:#}"));
    (lab, pcc)
}

#[test]
fn a_stun_client_finds_endpoint_independent_mapping_and_hairpinning() {
    require_root!();
    let (lab, _pcc) = lab_with_pcc(&[]);
    let mut checks = Checks::default();

    let port = 40_000;
    let d = lab
        .nat_discovery("c1", NatTest::Mapping, port)
        .expect("mapping discovery");
    checks.check(d.mapping == Some(Behaviour::EndpointIndependent), || {
        format!(
            "RFC 4787 REQ-1: c1:{port} must keep one mapping for every destination; {}",
            describe(&d, NatTest::Mapping)
        )
    });
    checks.check(
        d.bindings.iter().all(|b| b.reflexive.port() == port),
        || {
            format!(
                "RFC 4787 REQ-1/port preservation: c1:{port} is free on the WAN, so it should be \
             kept; mapped as {:?}",
                d.bindings.iter().map(|b| b.reflexive).collect::<Vec<_>>()
            )
        },
    );

    let d = lab
        .nat_discovery("c1", NatTest::Hairpinning, port + 1)
        .expect("hairpinning discovery");
    checks.check(d.hairpinning == Some(true), || {
        format!(
            "RFC 4787 REQ-9: a request to c1's own mapping must come back to it; {}",
            describe(&d, NatTest::Hairpinning)
        )
    });
    checks.finish("endpoint-independent mapping and hairpinning");
}

#[test]
fn filtering_is_address_and_port_dependent_by_default() {
    require_root!();
    let (lab, _pcc) = lab_with_pcc(&[]);
    let d = lab
        .nat_discovery("c1", NatTest::Filtering, 40_010)
        .expect("filtering discovery");
    assert_eq!(
        d.filtering,
        Some(Behaviour::AddressAndPortDependent),
        "RFC 4787 REQ-8: the default stays the secure filtering; {}",
        describe(&d, NatTest::Filtering)
    );
}

#[test]
fn nat_filtering_endpoint_independent_is_found_by_a_stun_client() {
    require_root!();
    let (lab, _pcc) = lab_with_pcc(&["--nat-filtering", "endpoint-independent"]);
    let d = lab
        .nat_discovery("c1", NatTest::Filtering, 40_020)
        .expect("filtering discovery");
    assert_eq!(
        d.filtering,
        Some(Behaviour::EndpointIndependent),
        "--nat-filtering endpoint-independent: the server's answer from its other address and \
         port must reach c1; {}",
        describe(&d, NatTest::Filtering)
    );
}

/// c1 and c2 each learn their mapping from the echo server; c2 then sends to c1's mapping
/// (after c1 sent to c2's, when `open_first`): c1 must receive it from c2's mapping.
fn hairpin(extra: &[&str], open_first: bool) {
    let (lab, _pcc) = lab_with_pcc(extra);
    let mut a = lab.udp_peer("c1", 40_100, 2).expect("c1's UDP socket");
    let mut b = lab.udp_peer("c2", 40_200, 3).expect("c2's UDP socket");
    if open_first {
        a.send(b.mapped, "open").expect("c1 sends to c2's mapping");
    }
    let mut got = None;
    for i in 0..10 {
        b.send(a.mapped, &format!("hello-{i}"))
            .expect("c2 sends to c1's mapping");
        got = a.wait_for("hello-", Duration::from_millis(300));
        if got.is_some() {
            break;
        }
    }
    let Some(from) = got else {
        panic!(
            "RFC 4787 REQ-9: c2 sent 10 datagrams to c1's mapping {} (a WAN address), none \
             reached c1 ({} at {}; c2 mapped as {})\nc1 {}\nc2 {}",
            a.mapped,
            a.name,
            lab.client_addr(1),
            b.mapped,
            a.log(),
            b.log()
        )
    };
    assert_eq!(
        from, b.mapped,
        "RFC 4787 REQ-9: a hairpinned datagram comes from the sender's own mapping"
    );
}

#[test]
fn udp_hairpin_reaches_the_other_host_with_endpoint_independent_filtering() {
    require_root!();
    hairpin(&["--nat-filtering", "endpoint-independent"], false);
}

#[test]
fn udp_hairpin_reaches_the_other_host_once_it_sent_there_first() {
    require_root!();
    hairpin(&[], true);
}
