//! One scanning LAN host must not fill the table (issue 12, section 2): c1 sends 70 000 SYNs
//! (35 000 from each of two source ports) to ports 1, 2, 3, … of a firewalled server (it answers none, as most of a real scan goes
//! unanswered, so every SYN would hold an opening connection for minutes), more than the
//! default table holds. c2's downloads keep working meanwhile, the scanner's refused
//! connections are counted per reason in /metrics, and the scanner is told with ICMP
//! "communication administratively prohibited" (type 3 code 13, RFC 5508 REQ-8).

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use pcc_tests::{Checks, Lab, require_root};

const SYNS: u32 = 70_000;
/// hping3's gap between SYNs: about 10 000 a second, the scan lasts 7 s or a little more.
const GAP_US: u32 = 100;
/// The `pcc_drops_total` reason of a connection refused by `--max-connections-per-host`.
const HOST_LIMIT_REASON: &str = "host_connection_limit";

#[test]
fn a_scanning_host_cannot_fill_the_table() {
    require_root!();
    let lab = Lab::builder()
        .clients(2)
        .servers(8)
        .build()
        .expect("building the lab");
    let target = lab.server_addr(7);
    lab.nft(
        "inet",
        &format!(
            "table inet pccscan {{\n chain input {{ type filter hook input priority 0; \
             policy accept;\n ip daddr {target} meta l4proto tcp drop\n }}\n}}\n"
        ),
    )
    .expect("firewalling the scan target");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(1 << 20).expect("1 MB test file");
    let pcc = lab.start_pcc(&[]).expect("starting pcc-ctl");
    let icmp = lab
        .tcpdump("c1", "icmp[icmptype] == 3 and icmp[icmpcode] == 13", 1)
        .expect("tcpdump in c1");
    let mut checks = Checks::default();

    let scanning = AtomicBool::new(true);
    let started = Instant::now();
    let (scan, downloads) = std::thread::scope(|s| {
        let downloads = s.spawn(|| {
            let mut results = Vec::new();
            while scanning.load(Ordering::Relaxed) && results.len() < 100 {
                let t = Instant::now();
                let r = lab.download("c2", lab.server_addr(0), &file, &["--max-time", "10"]);
                results.push((t.duration_since(started), r));
                std::thread::sleep(Duration::from_millis(200));
            }
            results
        });
        let scan = [40_000, 40_001]
            .iter()
            .map(|&sport| lab.syn_scan("c1", target, sport, SYNS / 2, GAP_US))
            .collect::<anyhow::Result<Vec<_>>>()
            .map(|v| v.join(""));
        scanning.store(false, Ordering::Relaxed);
        (scan, downloads.join().unwrap())
    });
    let scan = scan.expect("hping3 scan");
    eprintln!(
        "scan of {SYNS} SYNs took {:.1?}; {} downloads meanwhile; hping3: {}",
        started.elapsed(),
        downloads.len(),
        scan.trim()
    );

    for (at, r) in &downloads {
        match r {
            Ok(d) => checks.check(d.sha256 == file.sha256, || {
                format!("c2's download at {at:.1?} into the scan arrived damaged")
            }),
            Err(e) => checks.fail(format!(
                "c2's download at {at:.1?} into the scan failed: {e:#}"
            )),
        }
    }
    if let Err(e) = lab.download("c2", lab.server_addr(1), &file, &["--max-time", "10"]) {
        checks.fail(format!("c2's download after the scan failed: {e:#}"));
    }

    let m = pcc.metrics().expect("metrics");
    let refused = m
        .get("pcc_drops_total", &[("reason", HOST_LIMIT_REASON)])
        .unwrap_or(0.0);
    let full = m
        .get("pcc_drops_total", &[("reason", "conntrack_full")])
        .unwrap_or(0.0);
    let exhausted = m
        .get("pcc_drops_total", &[("reason", "nat_ports_exhausted")])
        .unwrap_or(0.0);
    checks.check(refused > 0.0, || {
        format!(
            "the scanner's refused connections are not counted: \
             pcc_drops_total{{reason=\"{HOST_LIMIT_REASON}\"}} is {refused} after {SYNS} SYNs \
             (conntrack_full {full}, nat_ports_exhausted {exhausted})"
        )
    });
    checks.check(full == 0.0 && exhausted == 0.0, || {
        format!(
            "one scanning host filled the table: pcc_drops_total conntrack_full {full}, \
             nat_ports_exhausted {exhausted}"
        )
    });

    let out = icmp.finish(Duration::from_secs(3));
    let seen = String::from_utf8_lossy(&out.stdout);
    checks.check(seen.contains("prohibited"), || {
        format!(
            "the scanner got no ICMP administratively prohibited (type 3 code 13) for a \
             refused connection; tcpdump in c1 saw: {:?}",
            seen.trim()
        )
    });
    checks.finish("a scanning host cannot fill the table");
}
