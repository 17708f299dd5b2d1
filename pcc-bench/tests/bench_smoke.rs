//! Smoke run of the program benchmark: it runs, produces every figure, asserts no timing.
#[test]
fn program_benchmark_produces_every_figure() {
    let report = pcc_bench::bench::measure_all(200, &[0, 10_000]).expect("program benchmark");
    assert_eq!(
        report.costs.len(),
        8,
        "floor, established TCP/UDP, reply, new, new with routes, routed, passed"
    );
    assert!(report.costs.iter().all(|c| c.median_ns > 0.0));
    // measure_amortized checked every repeated call still took its path (the right action).
    let amortized: Vec<&str> = report.amortized.iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        amortized,
        [
            "XDP_DROP floor",
            "established TCP, LAN to WAN",
            "established UDP, LAN to WAN",
            "TCP reply, WAN to LAN",
            "passed to the kernel (ARP)"
        ]
    );
    assert!(report.amortized.iter().all(|c| c.median_ns > 0.0));
    assert_eq!(report.fill_levels.len(), 2);
    assert!(report.map_bytes_per_connection > 0.0);
    let full = report.port_shortage.last().expect("rows");
    assert_eq!(
        (full.opened, full.exhausted_drops),
        (0, u64::from(full.attempts)),
        "no port left, all counted"
    );
    assert_eq!(
        report.port_shortage[0].opened, report.port_shortage[0].attempts,
        "all ports free, all open"
    );
}
