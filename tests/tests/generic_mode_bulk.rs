//! `--xdp-mode generic` carries bulk TCP correctly with GRO on every veth (the lab's
//! default): 20 MB downloads and an upload arrive intact. (The kernel skips GRO on a port with
//! a generic program, so no super-frame reaches it: `generic_bulk.rs` checks that.)

use pcc_tests::{Lab, require_root};

#[test]
fn generic_mode_carries_20_mb_intact() {
    require_root!();
    let lab = Lab::with(2, 4);
    let _pcc = lab
        .start_pcc_wans_up(&["--xdp-mode", "generic"])
        .expect("pcc-ctl up in generic mode, both WANs up");
    lab.transfers_intact(&["c1", "c2"], 20 << 20)
        .expect("20 MB each way in generic mode");
}
