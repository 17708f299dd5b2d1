//! The weighted slot table gives every slot to a WAN with a weight (none if all are zero),
//! and shares follow the weights.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pcc_common::{MAX_WANS, NO_WAN, SLOT_TABLE_SIZE, slots};

fuzz_target!(|weights: [u8; MAX_WANS]| {
    let w = weights.map(u32::from);
    let table = slots::build(&w);
    let total: u32 = w.iter().sum();
    let mut count = [0usize; MAX_WANS];
    for &s in &table.slots {
        if total == 0 {
            assert_eq!(s, NO_WAN);
            continue;
        }
        assert!(
            (s as usize) < MAX_WANS && w[s as usize] > 0,
            "slot owned by WAN {s}"
        );
        count[s as usize] += 1;
    }
    for i in 0..MAX_WANS {
        if total > 0 && w[i] > 0 {
            let want = SLOT_TABLE_SIZE as f64 * f64::from(w[i]) / f64::from(total);
            assert!(
                (count[i] as f64 - want).abs() <= want * 0.5 + 40.0,
                "WAN {i}: {} slots for weight {} of {total}",
                count[i],
                w[i]
            );
        }
    }
});
