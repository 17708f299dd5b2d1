//! `cargo xtask bench forward` in small (one short run of each set-up), writing to a scratch
//! file: it produces numbers, leaves no namespace behind and does not touch BENCHMARKS.md.

use pcc_tests::{
    bench_forward::{self, ForwardOpts, Mode},
    require_root, workspace_root,
};

#[test]
fn bench_forward_smoke() {
    require_root!();
    let real = workspace_root().join("BENCHMARKS.md");
    let before = std::fs::read(&real).ok();
    let out = std::env::temp_dir().join(format!("pcc-bench-forward-{}.md", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let opts = ForwardOpts {
        runs: 1,
        seconds: 1.0,
        verbose: true,
        ..ForwardOpts::default()
    };
    let result = bench_forward::forward_to_file(&opts, &out, "bench_forward_smoke (1 short run)");
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let report = result.expect("bench forward");
    eprintln!("{text}");

    assert_eq!(report.windows.len(), 6, "{report:?}");
    for mode in Mode::ALL {
        for fixed in [false, true] {
            let pps = report.median_of(mode, fixed, |w| w.pps);
            let ns = report.median_of(mode, fixed, |w| w.ns_per_packet);
            assert!(
                pps.is_finite() && pps > 0.0,
                "{mode:?} (fixed rate: {fixed}) counted nothing: {report:?}"
            );
            assert!(
                ns.is_finite() && ns > 0.0,
                "{mode:?} (fixed rate: {fixed}) has no CPU figure: {report:?}"
            );
        }
    }
    assert!(text.contains("## Forwarding rate"), "{text}");

    let left = pcc_tests::lab_leftovers(&report.lab_prefix);
    assert!(left.is_empty(), "left behind: {left:?}");
    // Other benchmarks may write BENCHMARKS.md meanwhile: check only that this run did not.
    let after = std::fs::read_to_string(&real).ok();
    assert!(
        after
            .as_deref()
            .is_none_or(|t| !t.contains("bench_forward_smoke"))
            || before
                .as_deref()
                .is_some_and(|b| String::from_utf8_lossy(b).contains("bench_forward_smoke")),
        "the smoke run wrote into BENCHMARKS.md"
    );
}
