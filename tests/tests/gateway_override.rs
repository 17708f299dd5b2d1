//! `--gateway wan1=ADDR`: a WAN without a default route of its own (static addressing, or a
//! router whose only default route is the primary's) is balanced onto like any other, with
//! the given gateway as its next hop and probe target.

use std::time::Duration;

use pcc_tests::{Lab, health::wait_wans_up, require_root, scenario};

#[test]
fn a_wan_without_a_default_route_uses_the_given_gateway() {
    require_root!();
    let lab = Lab::with(2, 50);
    let gateway = lab.isp_addr(1).to_string();
    lab.run(
        "router",
        &[
            "ip", "route", "del", "default", "via", &gateway, "dev", "wan1",
        ],
    )
    .unwrap();
    let arg = format!("wan1={gateway}");
    let mut pcc = lab
        .start_pcc(&["--gateway", &arg])
        .expect("starting pcc-ctl with --gateway");
    wait_wans_up(&pcc, &["wan0", "wan1"], Duration::from_secs(10)).expect("both WANs up");
    let spread = scenario::connection_spread(&lab, Some(&pcc)).expect("connections");
    eprintln!("gateway override: {}", spread.summary());
    assert!(
        spread.per_wan.iter().all(|&n| n >= 20),
        "both WANs carry connections: {}",
        spread.summary()
    );
    let (_, log) = pcc.output();
    let exit = pcc.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}\n{log}", exit.describe());
    let routes = lab
        .run("router", &["ip", "route", "show", "default"])
        .unwrap();
    assert!(
        !routes.contains("wan1"),
        "pcc-ctl added no default route of its own: {routes}"
    );
}
