//! Smoke run of `cargo xtask bench controller`: it runs, produces figures and cleans up; no
//! timing is asserted.

use pcc_tests::require_root;

#[test]
fn controller_benchmark_produces_figures() {
    require_root!();
    let out = std::env::temp_dir().join(format!("pcc-bench-controller-{}.md", std::process::id()));
    let section = pcc_tests::controller_bench::run(2, 2000, &out).expect("controller benchmark");
    let _ = std::fs::remove_file(&out);
    assert!(
        section.contains("| idle, 2 s |") && section.contains("| churning, 2 s |"),
        "{section}"
    );
    assert!(section.contains("MiB"), "{section}");
}
