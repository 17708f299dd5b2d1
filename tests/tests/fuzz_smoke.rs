//! A short run of every cargo-fuzz target of pcc-common (checksums, frame parsing, NAT port
//! choice, the slot table): 10 s each with libFuzzer and AddressSanitizer. Longer runs:
//! `cd pcc-common && cargo +nightly fuzz run -O TARGET -- -max_total_time=600`.

use std::process::Command;

const TARGETS: [&str; 4] = ["checksum", "packet", "nat_port", "slots"];

#[test]
fn every_fuzz_target_runs_clean_for_a_while() {
    let dir = pcc_tests::workspace_root().join("pcc-common");
    for target in TARGETS {
        let out = Command::new("cargo")
            .current_dir(&dir)
            // The outer cargo's settings are for the stable host build, not this one.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .args(["+nightly", "fuzz", "run", "-O", target, "--"])
            .args(["-max_total_time=10", "-print_final_stats=1"])
            .output()
            .expect("running cargo fuzz (xtask/setup.sh installs cargo-fuzz)");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "fuzz target {target} failed:\n{}",
            log.lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let runs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0);
        eprintln!("fuzz target {target}: {runs} inputs");
        assert!(runs > 1000, "fuzz target {target} ran only {runs} inputs");
    }
}
