//! wan0 renumbered under UDP streams (a DHCP renewal with a new lease: the old address goes,
//! the new one and the default route come, the ISP now accepts only the new one): the streams
//! that were on wan0 get replies again within 3 s, on a valid address (wan0's new one or
//! wan1's), and once they do no packet with the old source leaves the router.

use std::net::Ipv4Addr;
use std::time::Duration;

use pcc_tests::health::{FlowBed, mono_now, wait_until};
use pcc_tests::{ISP_ADDRS, WAN_ADDRS, require_root};

const NEW_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);

#[test]
fn a_renumbered_wan_moves_its_streams_within_3_s() {
    require_root!();
    let mut bed = FlowBed::start(&[], Duration::from_secs(40)).expect("flows on both WANs");
    let on0 = bed.on0.clone();
    let lab = &bed.lab;
    let old = WAN_ADDRS[0];
    // The ISP takes both while the lease changes hands, then the new one only.
    lab.isp_lease(0, &[old, NEW_ADDR]).unwrap();
    lab.ip_batch(
        "router",
        &[
            format!("addr del {old}/24 dev wan0"),
            format!("addr add {NEW_ADDR}/24 dev wan0"),
            format!(
                "route replace default via {} dev wan0 metric 100",
                ISP_ADDRS[0]
            ),
        ],
    )
    .expect("renumbering wan0");
    let t0 = mono_now();
    lab.isp_lease(0, &[NEW_ADDR]).unwrap();

    let valid = [format!("{NEW_ADDR}:"), format!("{}:", WAN_ADDRS[1])];
    let resumed = wait_until(
        "every wan0 stream answered on a valid address",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            let s = bed.flows.snapshot();
            Ok(on0
                .iter()
                .all(|&i| {
                    s.flows[i]
                        .between(t0, f64::MAX)
                        .any(|r| valid.iter().any(|v| r.seen.starts_with(v.as_str())))
                })
                .then_some(mono_now()))
        },
    );
    let snap = bed.flows.snapshot();
    let old_after: Vec<String> = on0
        .iter()
        .flat_map(|&i| snap.flows[i].between(t0, f64::MAX))
        .filter(|r| r.seen.starts_with(&format!("{old}:")))
        .map(|r| format!("{:.2}s {}", r.t - t0, r.seen))
        .collect();
    let refused_early = bed.lab.refused_sources(0).unwrap();
    if let Err(e) = resumed {
        let (_, log) = bed.pcc.output();
        panic!(
            "{e:#}\nreplies via the old address after the change: {old_after:?}\n\
             isp0 refused {refused_early} packets\n{}\npcc-ctl:\n{log}",
            snap.describe()
        );
    }
    // From now on nothing may leave with the old address (the ISP would refuse and count it).
    bed.lab.watch_lan_sources(0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let refused = bed.lab.refused_sources(0).unwrap();
    assert_eq!(
        refused, 0,
        "packets with a source other than {NEW_ADDR} left wan0 after the streams moved"
    );
    eprintln!(
        "resumed; isp0 refused {refused_early} packets before (the old address while pcc-ctl \
         noticed), replies via the old address after the change: {old_after:?}"
    );
    let r = bed.flows.snapshot();
    for &i in &on0 {
        let f = &r.flows[i];
        let last = f.replies.last().map(|r| r.seen.clone()).unwrap_or_default();
        assert!(
            valid.iter().any(|v| last.starts_with(v.as_str())),
            "{}: last reply via {last}",
            f.name()
        );
    }
}
