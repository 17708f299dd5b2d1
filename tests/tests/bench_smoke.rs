//! `cargo xtask bench failover` in small (one run of each fault), writing to a scratch file:
//! it produces numbers, leaves no namespace behind and does not touch BENCHMARKS.md.

use pcc_tests::{
    bench::{self, FailoverOpts},
    lab_leftovers, require_root, workspace_root,
};

#[test]
fn bench_failover_smoke() {
    require_root!();
    let real = workspace_root().join("BENCHMARKS.md");
    let before = std::fs::read(&real).ok();
    let out = std::env::temp_dir().join(format!("pcc-bench-smoke-{}.md", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let opts = FailoverOpts {
        runs: 1,
        carrier_runs: 1,
        ..FailoverOpts::default()
    };
    let result = bench::failover_to_file(&opts, &out, "bench_smoke (1 run of each)");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let report = result.expect("bench failover");
    eprintln!("{text}");

    assert_eq!(report.runs.len(), 2);
    let r = &report.runs[0];
    assert!(r.on_wan0 > 0, "no flow on wan0: {r:?}");
    for (what, v) in [("failover", r.failover), ("down", r.down), ("up", r.up)] {
        assert!(
            v.is_some_and(|s| s.is_finite() && s > 0.0),
            "internet-dead run measured no {what}: {r:?}"
        );
    }
    assert!(
        report.runs[1].failover.is_some() && report.runs[1].down.is_some(),
        "carrier run measured nothing: {:?}",
        report.runs[1]
    );
    assert!(text.starts_with("# pcc benchmarks"), "{text}");
    assert!(
        text.contains("## Failover") && text.contains("| internet dead | 1 |"),
        "{text}"
    );

    let left = lab_leftovers(&report.lab_prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(
        std::fs::read(&real).ok(),
        before,
        "the smoke run changed BENCHMARKS.md"
    );
}
