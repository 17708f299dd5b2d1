//! RFC 1624 incremental updates agree with a full RFC 1071 recomputation for any data and
//! any changed 16- or 32-bit field.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pcc_common::csum;

fuzz_target!(|input: (Vec<u8>, u16, u32, bool)| {
    let (mut data, at, new, wide) = input;
    let width = if wide { 4 } else { 2 };
    if data.len() < width + 2 {
        return;
    }
    data.truncate(1500);
    // The field sits on an even offset, as every header field the dataplane rewrites does.
    let at = (usize::from(at) % (data.len() - width + 1)) & !1;
    if at + width > data.len() {
        return;
    }
    let before = csum::checksum(&data);
    let read = |d: &[u8]| {
        u32::from_be_bytes([
            d[at],
            d[at + 1],
            d.get(at + 2).copied().unwrap_or(0),
            d.get(at + 3).copied().unwrap_or(0),
        ])
    };
    let updated = if wide {
        let old = read(&data);
        data[at..at + 4].copy_from_slice(&new.to_be_bytes());
        csum::replace4(before, old, new)
    } else {
        let old = u16::from_be_bytes([data[at], data[at + 1]]);
        let new = new as u16;
        data[at..at + 2].copy_from_slice(&new.to_be_bytes());
        csum::replace2(before, old, new)
    };
    let full = csum::checksum(&data);
    // One's complement has two zeros; the incremental form never yields -0 (0xffff is +0
    // complemented), so compare as sums.
    assert!(
        updated == full || (updated == 0xffff && full == 0) || (updated == 0 && full == 0xffff),
        "incremental {updated:#06x} vs full {full:#06x}"
    );
});
