//! A veth port whose peer has tx checksumming on gets frames with partial checksums (and 64 KB
//! segments) that XDP cannot complete: pcc says so at start-up in one line naming the port, the
//! peer and the fix, for that port only, and keeps running.

use pcc_tests::{Lab, require_root};

#[test]
fn a_veth_peer_with_tx_checksumming_is_named_at_start_up() {
    require_root!();
    let lab = Lab::with(1, 1);
    lab.sh("isp0", "ethtool -K up0 tx on >/dev/null").unwrap();
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    let warned: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| l.contains("tx checksumming on"))
        .collect();
    assert_eq!(warned.len(), 1, "one line, for wan0 only:\n{}", exit.stderr);
    assert!(
        warned[0].contains(
            "wan0: its veth peer up0 (in another network namespace) has tx checksumming on"
        ) && warned[0].contains("run `ethtool -K up0 tx off` there"),
        "{}",
        warned[0]
    );
}
