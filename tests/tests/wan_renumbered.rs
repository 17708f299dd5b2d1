//! wan0 renumbered under UDP streams (a DHCP renewal with a new lease: the old address goes,
//! the new one and the default route come, the ISP now accepts only the new one): the streams
//! that were on wan0 get replies again within 3 s, on a valid address (wan0's new one or
//! wan1's), and once they do no packet with the old source leaves the router. The same when
//! the renewal happened while pcc-ctl was down (killed) and the next pcc-ctl adopted the
//! running dataplane, whose connections still carry the old address.

use std::{net::Ipv4Addr, time::Duration};

use pcc_tests::{
    ISP_ADDRS, Lab, PccHandle, WAN_ADDRS,
    health::{FlowBed, UdpFlows, mono_now, wait_until},
    require_root,
};

const NEW_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);

#[test]
fn a_renumbered_wan_moves_its_streams_within_3_s() {
    require_root!();
    let FlowBed {
        mut flows,
        mut pcc,
        lab,
        on0,
    } = FlowBed::start(&[], Duration::from_secs(40)).expect("flows on both WANs");
    renumber(&lab);
    let t0 = mono_now();
    moved(&lab, &mut pcc, &mut flows, &on0, t0);
    drop(flows);
    drop(pcc);
}

#[test]
fn a_wan_renumbered_while_pcc_ctl_was_down_moves_after_the_restart() {
    require_root!();
    let FlowBed {
        mut flows,
        pcc,
        lab,
        on0,
    } = FlowBed::start(&[], Duration::from_secs(40)).expect("flows on both WANs");
    pcc.kill();
    renumber(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let mut pcc = lab.start_pcc(&[]).expect("pcc-ctl adopts the dataplane");
    let t0 = mono_now();
    let (out, _) = pcc.output();
    eprintln!("restarted: {}", out.trim());
    moved(&lab, &mut pcc, &mut flows, &on0, t0);
    drop(flows);
    drop(pcc);
}

/// wan0 198.18.1.2 -> 198.18.1.4 as a DHCP client does it, and isp0's lease with it.
fn renumber(lab: &Lab) {
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
    lab.isp_lease(0, &[NEW_ADDR]).unwrap();
}

/// Every flow of `on0` answers on a valid address within 3 s of `t0`; then no packet with a
/// source other than the new address reaches isp0 for 2 s.
fn moved(lab: &Lab, pcc: &mut PccHandle, flows: &mut UdpFlows, on0: &[usize], t0: f64) {
    let old = WAN_ADDRS[0];
    let valid = [format!("{NEW_ADDR}:"), format!("{}:", WAN_ADDRS[1])];
    let resumed = wait_until(
        "every wan0 stream answered on a valid address",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            let s = flows.snapshot();
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
    let snap = flows.snapshot();
    let old_after: Vec<String> = on0
        .iter()
        .flat_map(|&i| snap.flows[i].between(t0, f64::MAX))
        .filter(|r| r.seen.starts_with(&format!("{old}:")))
        .map(|r| format!("{:.2}s {}", r.t - t0, r.seen))
        .collect();
    let refused_early = lab.refused_sources(0).unwrap();
    let resumed = match resumed {
        Ok(t) => t - t0,
        Err(e) => {
            let (_, log) = pcc.output();
            panic!(
                "{e:#}\nreplies via the old address since: {old_after:?}\n\
                 isp0 refused {refused_early} packets\n{}\npcc-ctl:\n{log}",
                snap.describe()
            );
        }
    };
    // From now on nothing may leave with the old address (the ISP would refuse and count it).
    lab.watch_lan_sources(0).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let refused = lab.refused_sources(0).unwrap();
    assert_eq!(
        refused, 0,
        "packets with a source other than {NEW_ADDR} left wan0 after the streams moved"
    );
    eprintln!(
        "resumed after {resumed:.2} s; isp0 refused {refused_early} packets before, \
         replies via the old address since: {old_after:?}"
    );
    let r = flows.snapshot();
    for &i in on0 {
        let f = &r.flows[i];
        let last = f.replies.last().map(|r| r.seen.clone()).unwrap_or_default();
        assert!(
            valid.iter().any(|v| last.starts_with(v.as_str())),
            "{}: last reply via {last}",
            f.name()
        );
    }
}
