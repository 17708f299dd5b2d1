//! The router's default routes come back exactly as they were (same gateways, devices,
//! metrics, protocol, scope, flags) when pcc-ctl ends while it has one demoted: on SIGTERM,
//! after a SIGKILL through `pcc-ctl down`, and through the next `pcc-ctl up`, which adopts
//! what the killed one demoted.

use std::time::Duration;

use pcc_tests::{
    Lab, PccHandle,
    health::{DefaultRoute, wait_until, wait_wan_state, wait_wans_up},
    require_root,
};

const S: fn(u64) -> Duration = Duration::from_secs;
/// What pcc adds to the metric of a dead WAN's default route (pcc-ctl/src/wan.rs).
const DEMOTED_METRIC: u64 = 1_000_000;

/// Starts pcc-ctl, applies `fault` to isp0 and waits until wan0 is down and its default route
/// demoted; returns the default routes from before pcc-ctl started.
fn demoted(lab: &Lab, fault: impl FnOnce(&Lab)) -> (PccHandle, Vec<DefaultRoute>) {
    let before = lab.router_default_routes().unwrap();
    assert!(
        before.iter().any(|r| r.dev == "wan0" && r.metric == 100)
            && before.iter().any(|r| r.dev == "wan1" && r.metric == 200),
        "the lab's default routes: {before:?}"
    );
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], S(10)).expect("both WANs up");
    fault(lab);
    wait_wan_state(&pcc, "wan0", false, S(5)).expect("wan0 down");
    wait_until(
        "wan0's default route demoted",
        S(5),
        Duration::from_millis(50),
        || Ok(wan0_demoted(&lab.router_default_routes()?).then_some(())),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: routes {:?}",
            lab.router_default_routes().unwrap_or_default()
        )
    });
    (pcc, before)
}

fn small_lab() -> Lab {
    Lab::builder().clients(1).servers(2).build().expect("lab")
}

fn wan0_demoted(routes: &[DefaultRoute]) -> bool {
    routes
        .iter()
        .any(|r| r.dev == "wan0" && r.metric == 100 + DEMOTED_METRIC)
}

/// Stops pcc-ctl with SIGTERM; it must exit 0.
fn sigterm(pcc: PccHandle) {
    let exit = pcc.stop().expect("SIGTERM");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
}

/// [`demoted`] by a cut, then SIGKILL: the route stays demoted. Returns the routes from before.
fn killed_while_demoted(lab: &Lab) -> Vec<DefaultRoute> {
    let (pcc, before) = demoted(lab, cut);
    pcc.kill();
    let left = lab.router_default_routes().unwrap();
    assert!(
        wan0_demoted(&left),
        "a killed pcc-ctl cannot restore the route: {left:?}"
    );
    before
}

fn cut(lab: &Lab) {
    lab.cut_isp(0).expect("cut isp0");
}

/// Waits (5 s at most) until the default routes are `before` again.
fn wait_restored(lab: &Lab, before: &[DefaultRoute], when: &str) {
    let done = wait_until(when, S(5), Duration::from_millis(50), || {
        Ok((lab.router_default_routes()? == before).then_some(()))
    });
    if done.is_err() {
        assert_restored(lab, before, when);
    }
}

fn assert_restored(lab: &Lab, before: &[DefaultRoute], when: &str) {
    let after = lab.router_default_routes().unwrap();
    eprintln!("default routes {when}: {after:?}");
    assert_eq!(
        after, before,
        "default routes {when} differ from those before pcc-ctl started"
    );
}

#[test]
fn sigterm_while_a_route_is_demoted_restores_it() {
    require_root!();
    let lab = small_lab();
    let (pcc, before) = demoted(&lab, cut);
    sigterm(pcc);
    assert_restored(&lab, &before, "after SIGTERM");
}

#[test]
fn down_after_a_kill_while_a_route_is_demoted_restores_it() {
    require_root!();
    let lab = small_lab();
    let before = killed_while_demoted(&lab);
    let (ok, text) = lab.pcc_down().expect("pcc-ctl down");
    assert!(
        ok && text.contains("restored 1 demoted default route(s)"),
        "{text}"
    );
    assert_restored(&lab, &before, "after SIGKILL and `pcc-ctl down`");
    assert_eq!(lab.leftover_attachments().unwrap(), None);
}

#[test]
fn the_next_controller_adopts_a_demoted_route_and_restores_it() {
    require_root!();
    let lab = small_lab();
    let before = killed_while_demoted(&lab);
    lab.restore_isp(0).expect("restore isp0");
    let pcc = lab.start_pcc(&[]).expect("restarting pcc-ctl");
    wait_wans_up(&pcc, &["wan0", "wan1"], S(10)).expect("both WANs up");
    wait_restored(&lab, &before, "restored by the next controller");
    sigterm(pcc);
    assert_restored(&lab, &before, "after the adopting controller's SIGTERM");
}

#[test]
fn sigterm_while_the_carrier_is_lost_restores_the_route() {
    require_root!();
    let lab = small_lab();
    let (pcc, before) = demoted(&lab, |lab| lab.carrier_down(0).expect("carrier down"));
    sigterm(pcc);
    // The kernel flags routes over a port without carrier `linkdown`: compare once it is back.
    lab.carrier_up(0).expect("carrier up");
    wait_restored(
        &lab,
        &before,
        "after SIGTERM without carrier, once the carrier is back",
    );
}
