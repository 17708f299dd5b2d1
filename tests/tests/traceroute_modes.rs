//! `traceroute` from a LAN client in its three modes (UDP, ICMP echo, TCP SYN to the lab's
//! HTTP server) shows the ISP hop (198.18.1.1 or 198.18.2.1: its "time exceeded" about a
//! translated probe is translated back) and the destination, with the kernel's forwarding off
//! and on.

use std::time::Duration;

use pcc_tests::{Checks, ISP_ADDRS, Lab, require_root};

#[test]
fn traceroute_modes_with_forwarding_off() {
    require_root!();
    check(false);
}

#[test]
fn traceroute_modes_with_forwarding_on() {
    require_root!();
    check(true);
}

/// The address of each hop line (`" 2  198.18.1.1  0.101 ms"`; `*` when nothing answered).
fn hops(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.next()?.parse::<u32>().ok()?;
            Some(it.next().unwrap_or("*").to_owned())
        })
        .collect()
}

fn check(ip_forward: bool) {
    let lab = Lab::builder()
        .clients(1)
        .servers(4)
        .ip_forward(ip_forward)
        .build()
        .expect("building the lab");
    lab.start_http().expect("HTTP server");
    let _pcc = lab
        .start_pcc_wans_up(&[])
        .expect("pcc-ctl up, both WANs up");
    let mut checks = Checks::default();
    let modes: [(&str, &[&str]); 3] = [
        ("UDP", &[]),
        ("ICMP", &["-I"]),
        ("TCP", &["-T", "-p", "80"]),
    ];
    for (i, (mode, flags)) in modes.into_iter().enumerate() {
        let dst = lab.server_addr(i).to_string();
        let mut args = vec!["traceroute", "-n", "-q", "1", "-w", "1", "-m", "6"];
        args.extend_from_slice(flags);
        args.push(&dst);
        let out = lab
            .exec_opts("c1", &args, None, Duration::from_secs(30))
            .expect("traceroute");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "traceroute {mode}:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let h = hops(&text);
        checks.check(
            h.iter()
                .any(|a| ISP_ADDRS.iter().any(|isp| *a == isp.to_string())),
            || format!("{mode}: no ISP hop (198.18.1.1 / 198.18.2.1) in {h:?}"),
        );
        checks.check(h.last() == Some(&dst), || {
            format!("{mode}: the last hop is not the destination {dst}: {h:?}")
        });
    }
    checks.finish(&format!(
        "traceroute, forwarding {}",
        pcc_tests::on_off(ip_forward)
    ));
}
