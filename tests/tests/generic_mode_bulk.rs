//! `--xdp-mode generic` carries bulk TCP correctly: generic XDP runs after GRO, so frames
//! larger than the MTU arrive there. 20 MB downloads and an upload with GRO on every veth
//! (the lab's default) arrive intact.

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
