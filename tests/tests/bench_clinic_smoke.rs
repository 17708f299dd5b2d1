//! Smoke run of `cargo xtask bench clinic`: both setups run and produce figures; no timing or
//! throughput is asserted.

use pcc_tests::require_root;

#[test]
fn clinic_benchmark_produces_figures() {
    require_root!();
    let out = std::env::temp_dir().join(format!("pcc-bench-clinic-{}.md", std::process::id()));
    let section = pcc_tests::clinic_bench::run(3, 20, &out).expect("clinic benchmark");
    let _ = std::fs::remove_file(&out);
    assert!(
        section.contains("| kernel, one line |") && section.contains("| pcc, both lines |"),
        "{section}"
    );
}
