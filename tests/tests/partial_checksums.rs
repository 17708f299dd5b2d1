//! Hosts that offload checksums (the veth default) hand the router frames with partial
//! checksums (CHECKSUM_PARTIAL). pcc must never corrupt such traffic silently: in native and
//! generic XDP mode it either says so at start-up (a line naming checksums, or a refusal) or
//! carries 20 MB downloads and an upload intact.

use pcc_tests::{Lab, require_root};

#[test]
fn partial_checksums_native() {
    require_root!();
    check("native");
}

#[test]
fn partial_checksums_generic() {
    require_root!();
    check("generic");
}

fn check(mode: &str) {
    let lab = Lab::with(2, 4);
    // Every host's side of a link to the router, and the links beyond, offload again.
    for (node, dev) in [
        ("c1", "eth0"),
        ("c2", "eth0"),
        ("inet", "i0"),
        ("inet", "i1"),
        ("isp0", "up0"),
        ("isp1", "up0"),
    ] {
        lab.sh(node, &format!("ethtool -K {dev} tx on >/dev/null"))
            .unwrap();
    }
    let mut pcc = match lab.start_pcc_wans_up(&["--xdp-mode", mode]) {
        Ok(p) => p,
        Err(e) => {
            let said = format!("{e:#}");
            assert!(
                said.contains("checksum"),
                "{mode}: pcc-ctl failed to start without naming checksums: {said}"
            );
            return;
        }
    };
    let (out, err) = pcc.output();
    if (out + &err).contains("checksum") {
        eprintln!("{mode}: pcc-ctl said: {err}");
        return;
    }
    if let Err(e) = lab.transfers_intact(&["c1", "c2"], 20 << 20) {
        let m = pcc
            .metrics()
            .map(|m| m.by_label("pcc_packets_total", "reason"));
        panic!("{mode}: pcc-ctl said nothing about checksums, and: {e:#}\npackets: {m:?}");
    }
}
