//! A NAT port candidate always lies in the configured range, except the host's own port on the first try when that is allowed, and
//! the host's port when the range is empty (then nothing is claimed anyway).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pcc_common::NatPortRange;

fuzz_target!(|input: (u16, u16, u16, u32, u32)| {
    let (min, max, orig, attempt, random) = input;
    let r = NatPortRange { min, max };
    let port = r.candidate(orig, attempt % 16, random);
    if r.is_empty() {
        assert_eq!(port, orig);
        return;
    }
    assert!(r.contains(port), "{port} outside {r:?}");
    if attempt % 16 == 0 && r.contains(orig) {
        assert_eq!(port, orig);
    }
    // nth enumerates exactly the usable ports.
    let i = random % r.len();
    assert!(r.contains(r.nth(i)));
});
