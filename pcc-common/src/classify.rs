//! MikroTik's per-connection classifiers and the hash that feeds the slot table.

/// Which fields of a new connection choose its WAN (MikroTik PCC's classifier set).
#[repr(u8)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Classifier {
    SrcAddress = 0,
    DstAddress = 1,
    /// All of a client's connections to one server share a WAN: sessions tied to the client
    /// address and multi-connection protocols keep working.
    #[default]
    BothAddresses = 2,
    SrcPort = 3,
    DstPort = 4,
    BothPorts = 5,
    BothAddressesAndPorts = 6,
}

impl Classifier {
    pub const ALL: [Classifier; 7] = [
        Classifier::SrcAddress,
        Classifier::DstAddress,
        Classifier::BothAddresses,
        Classifier::SrcPort,
        Classifier::DstPort,
        Classifier::BothPorts,
        Classifier::BothAddressesAndPorts,
    ];

    pub const fn from_u8(v: u8) -> Classifier {
        match v {
            0 => Classifier::SrcAddress,
            1 => Classifier::DstAddress,
            3 => Classifier::SrcPort,
            4 => Classifier::DstPort,
            5 => Classifier::BothPorts,
            6 => Classifier::BothAddressesAndPorts,
            _ => Classifier::BothAddresses,
        }
    }

    /// MikroTik's spelling, as taken by `--classifier`.
    pub const fn name(self) -> &'static str {
        match self {
            Classifier::SrcAddress => "src-address",
            Classifier::DstAddress => "dst-address",
            Classifier::BothAddresses => "both-addresses",
            Classifier::SrcPort => "src-port",
            Classifier::DstPort => "dst-port",
            Classifier::BothPorts => "both-ports",
            Classifier::BothAddressesAndPorts => "both-addresses-and-ports",
        }
    }

    pub fn from_name(name: &str) -> Option<Classifier> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Hash of the fields this classifier uses. Addresses and ports may be in any byte order
    /// as long as it is always the same one (the dataplane passes them as on the wire).
    #[inline(always)]
    pub fn hash(
        self,
        seed: u32,
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
    ) -> u32 {
        let (a, b, c) = match self {
            Classifier::SrcAddress => (src_addr, 0, 0),
            Classifier::DstAddress => (0, dst_addr, 0),
            Classifier::BothAddresses => (src_addr, dst_addr, 0),
            Classifier::SrcPort => (0, 0, u32::from(src_port)),
            Classifier::DstPort => (0, 0, u32::from(dst_port) << 16),
            Classifier::BothPorts => (0, 0, u32::from(src_port) | u32::from(dst_port) << 16),
            Classifier::BothAddressesAndPorts => (
                src_addr,
                dst_addr,
                u32::from(src_port) | u32::from(dst_port) << 16,
            ),
        };
        // The classifier itself goes into the hash so changing it reshuffles everything,
        // like changing MikroTik's classifier does.
        hash3(a, b, c, seed ^ (self as u32).wrapping_mul(0x9e37_79b9))
    }
}

/// Bob Jenkins' `jhash_3words` (the kernel's `jhash.h`): cheap in BPF (no loops, no
/// multiplications) and well mixed in every output bit, so `% SLOT_TABLE_SIZE` is uniform.
#[inline(always)]
pub fn hash3(a: u32, b: u32, c: u32, seed: u32) -> u32 {
    let init = 0xdead_beef_u32.wrapping_add(3 << 2).wrapping_add(seed);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(init),
        b.wrapping_add(init),
        c.wrapping_add(init),
    );
    // __jhash_final
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SLOT_TABLE_SIZE;

    const SRC: u32 = 0x0a00_000b;
    const DST: u32 = 0xcb00_710a;

    #[test]
    fn names_round_trip() {
        for c in Classifier::ALL {
            assert_eq!(Classifier::from_name(c.name()), Some(c));
            assert_eq!(Classifier::from_u8(c as u8), c);
        }
        assert_eq!(Classifier::from_name("bogus"), None);
    }

    /// Each classifier depends on exactly the fields MikroTik's does.
    #[test]
    fn classifiers_use_exactly_their_fields() {
        // (uses src_addr, dst_addr, src_port, dst_port)
        let uses = |c: Classifier| match c {
            Classifier::SrcAddress => (true, false, false, false),
            Classifier::DstAddress => (false, true, false, false),
            Classifier::BothAddresses => (true, true, false, false),
            Classifier::SrcPort => (false, false, true, false),
            Classifier::DstPort => (false, false, false, true),
            Classifier::BothPorts => (false, false, true, true),
            Classifier::BothAddressesAndPorts => (true, true, true, true),
        };
        for c in Classifier::ALL {
            let base = c.hash(7, SRC, DST, 40000, 443);
            let (sa, da, sp, dp) = uses(c);
            assert_eq!(
                c.hash(7, SRC + 1, DST, 40000, 443) != base,
                sa,
                "{c:?} src addr"
            );
            assert_eq!(
                c.hash(7, SRC, DST + 1, 40000, 443) != base,
                da,
                "{c:?} dst addr"
            );
            assert_eq!(
                c.hash(7, SRC, DST, 40001, 443) != base,
                sp,
                "{c:?} src port"
            );
            assert_eq!(
                c.hash(7, SRC, DST, 40000, 444) != base,
                dp,
                "{c:?} dst port"
            );
        }
    }

    /// Sequential addresses and ports (what a LAN really looks like) spread evenly over slots.
    #[test]
    fn hash_spreads_sequential_inputs_evenly() {
        for c in Classifier::ALL {
            let mut buckets = [0u32; 16];
            let mut distinct = std::collections::HashSet::new();
            for i in 0..4096u32 {
                let (src, dst) = (SRC + i % 64, DST + i / 64);
                let (sport, dport) = (32768 + i as u16, 443 + (i % 64) as u16);
                let h = c.hash(1, src, dst, sport, dport);
                distinct.insert(h);
                buckets[(h as usize % SLOT_TABLE_SIZE) % 16] += 1;
            }
            // Classifiers that see only 64 distinct inputs here cannot be judged on 16 buckets.
            if distinct.len() < 1000 {
                continue;
            }
            // 256 per bucket, sd 15.5: +-25 % is four standard deviations.
            let expect = 4096 / 16;
            for b in buckets {
                assert!(
                    b > expect * 3 / 4 && b < expect * 5 / 4,
                    "{c:?}: {buckets:?}"
                );
            }
        }
    }
}
