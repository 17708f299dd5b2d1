//! The host-side frame parser and fragment reassembler take any bytes without panicking,
//! and a parsed frame's fields stay inside it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pcc_common::packet;

fuzz_target!(|input: (Vec<u8>, Vec<u8>)| {
    let (a, b) = input;
    if let Some(p) = packet::parse(&a) {
        assert!(p.l4.len() + 34 <= a.len());
    }
    let _ = packet::reassemble(&[a.clone(), b]);
    let _ = packet::reassemble(&[a]);
});
