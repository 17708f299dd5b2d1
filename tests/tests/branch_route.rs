//! A branch router behind the router's non-WAN interface `vpn0`, reached by the static route
//! `198.19.251.0/24 via 198.19.250.2 dev vpn0`: that route is the kernel's, not a WAN's. With
//! forwarding on, a client's HTTP request and ping reach the branch, which sees the client's
//! own address (no NAT); with forwarding off the kernel does not forward it. Either way no
//! packet for the branch goes to an ISP.

use pcc_tests::{BRANCH_HOST, BRANCH_NET, Checks, Lab, require_root};

#[test]
fn branch_is_the_kernels_with_forwarding_on() {
    require_root!();
    check(true);
}

#[test]
fn branch_is_the_kernels_with_forwarding_off() {
    require_root!();
    check(false);
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(2)
        .servers(2)
        .branch(true)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_http_on("branch")
        .expect("HTTP server in the branch");
    let file = lab.http_file(1000).unwrap();
    let _pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    for i in 0..2 {
        lab.watch_isp(i, "branch", &format!("ip daddr {BRANCH_NET}"))
            .unwrap();
    }
    let mut checks = Checks::default();
    for c in ["c1", "c2"] {
        let dl = lab.download(c, BRANCH_HOST, &file, &["--max-time", "5"]);
        let pings = lab.ping(c, BRANCH_HOST, 3).unwrap_or(0);
        if ip_forward {
            checks.check(dl.as_ref().is_ok_and(|d| d.sha256 == file.sha256), || {
                format!("{c}: HTTP to the branch {BRANCH_HOST}: {dl:?}")
            });
            checks.check(pings == 3, || {
                format!("{c}: {pings} of 3 pings to the branch answered")
            });
        }
    }
    let log = lab.http_log_of("branch").expect("branch log");
    for e in &log {
        let own = (1..=2).any(|i| e.client == lab.client_addr(i));
        checks.check(own, || {
            format!(
                "the branch saw a request from {} (not a LAN host's own address)",
                e.client
            )
        });
    }
    if ip_forward {
        checks.check(log.len() == 2, || format!("the branch logged {log:?}"));
    }
    for i in 0..2 {
        let n = lab.isp_matched(i, "branch").unwrap();
        checks.check(n == 0, || {
            format!("isp{i} got {n} packets for the branch subnet {BRANCH_NET}")
        });
    }
    checks.finish(&format!(
        "branch route, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}
