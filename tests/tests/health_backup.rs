//! `--wan wan0 --backup wan1`: wan1 carries nothing while wan0 lives, everything new while
//! wan0 is dead, and nothing new again once wan0 is back.

use std::time::Duration;

use pcc_tests::{
    Lab,
    health::{wait_route, wait_wan_state, wait_wans_up},
    require_root, scenario,
};

#[test]
fn backup_wan_only_while_primary_dead() {
    require_root!();
    let lab = Lab::with(3, 50);
    let pcc = lab
        .start_pcc(&["--wan", "wan0", "--backup", "wan1"])
        .expect("starting pcc-ctl with a backup WAN");
    wait_wans_up(&pcc, &["wan0"], Duration::from_secs(10)).expect("wan0 up");

    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("backup, wan0 alive: {}", spread.summary());
    assert_eq!(
        spread.per_wan,
        [150, 0],
        "with wan0 alive every connection uses it: {}",
        spread.summary()
    );

    lab.cut_isp(0).expect("cutting isp0");
    wait_wan_state(&pcc, "wan0", false, Duration::from_secs(3)).expect("wan0 down within 3 s");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("backup, wan0 dead: {}", spread.summary());
    assert_eq!(
        spread.per_wan,
        [0, 150],
        "with wan0 dead every new connection uses the backup: {}",
        spread.summary()
    );

    lab.restore_isp(0).expect("restoring isp0");
    wait_wan_state(&pcc, "wan0", true, Duration::from_secs(5)).expect("wan0 up within 5 s");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("150 connections");
    eprintln!("backup, wan0 back: {}", spread.summary());
    assert_eq!(
        spread.per_wan,
        [150, 0],
        "with wan0 back new connections leave the backup: {}",
        spread.summary()
    );
}

/// The router's own traffic (DNS, NTP, tunnels) follows the tiers too: with the primary on
/// wan1 (metric 200) and the backup on wan0 (metric 100), the backup's default route is
/// demoted while the primary lives, promoted while it is dead, and put back as it was on exit.
#[test]
fn routers_own_traffic_uses_the_primary_not_the_backup() {
    require_root!();
    let lab = Lab::with(1, 1);
    let dst = lab.server_addr(0);
    assert_eq!(lab.route_dev("router", dst).unwrap(), "wan0", "lab default");
    let pcc = lab
        .start_pcc(&["--wan", "wan1", "--backup", "wan0"])
        .expect("starting pcc-ctl with wan0 as the backup");
    wait_wans_up(&pcc, &["wan1"], Duration::from_secs(10)).expect("wan1 up");
    wait_route(&lab, dst, "wan1", Duration::from_secs(3)).expect("own traffic on the primary");

    lab.cut_isp(1).expect("cutting isp1");
    wait_wan_state(&pcc, "wan1", false, Duration::from_secs(3)).expect("wan1 down");
    wait_route(&lab, dst, "wan0", Duration::from_secs(3))
        .expect("own traffic on the backup while the primary is dead");

    lab.restore_isp(1).expect("restoring isp1");
    wait_wan_state(&pcc, "wan1", true, Duration::from_secs(5)).expect("wan1 back");
    wait_route(&lab, dst, "wan1", Duration::from_secs(3)).expect("own traffic back on the primary");

    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    assert_eq!(
        lab.route_dev("router", dst).unwrap(),
        "wan0",
        "the routes are as they were before pcc-ctl ran"
    );
}
