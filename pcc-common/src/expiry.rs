//! Where connections wait to be expired, and how fast the dataplane's sweep walks them.
//!
//! Every tracked tuple (a LAN host's connection by its `CT_OUT` key, a tuple of the router's
//! own by its `CT_IN` key) holds one slot of `EXPIRY_SLOTS`, an array twice the table's size.
//! One `bpf_timer` (`SWEEP`) wakes every [`SWEEP_TICK_NS`] and looks at the next
//! [`Sweep::batch`] slots, forgetting what has been idle past its timeout. An array can be
//! walked a slice at a time from a cursor, which a hash map cannot (`bpf_for_each_map_elem`
//! always starts at its first bucket), so each wake-up's work is bounded however large the
//! table. This replaced a `bpf_timer` per connection (einat's design): the kernel allocates
//! each such timer (about 0.8 µs of a new connection's 2.1 µs here, and it fails now and then
//! under load, as it allocates without locks) and queues it in an hrtimer tree as large as
//! the table.
use crate::FlowKey;

/// How often the sweep wakes: often enough that a wake-up's slice stays small.
pub const SWEEP_TICK_NS: u64 = 100_000_000;
/// The sweep walks all slots once in this many wake-ups (2 s) while that keeps a slice at
/// most [`MAX_SWEEP_BATCH`].
pub const SWEEP_TICKS_PER_PASS: u32 = 20;
/// The most slots one wake-up looks at: with a slot lookup and a hash lookup each, about a
/// millisecond of the timer's softirq. Larger tables take longer per pass instead (2M slots,
/// for 1M connections: 12.8 s), which only delays expiry by that much.
pub const MAX_SWEEP_BATCH: u32 = 16_384;
/// Slots a new tuple tries from its home slot onwards before it is refused. At most half the
/// slots are taken, so a run of this many taken ones is all but impossible.
pub const SLOT_PROBES: u32 = 32;

/// A free slot.
pub const SLOT_FREE: u64 = 0;
/// A slot being claimed: its key is being written (the sweep skips it).
pub const SLOT_BUSY: u64 = 2;
const SLOT_READY: u64 = 1;
const SLOT_ROUTER: u64 = 2;

/// The sweep's sizes, in `Config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// `EXPIRY_SLOTS` has `slot_mask + 1` slots (a power of two).
    pub slot_mask: u32,
    /// Slots looked at per wake-up.
    pub batch: u32,
}

impl Sweep {
    /// Sizes for a table of `max_connections`: twice as many slots (every tuple the table
    /// holds has one, a LAN connection's or the router's, and both live in `CT_IN`), rounded
    /// up to a power of two.
    pub fn for_connections(max_connections: u32) -> Self {
        let slots = slot_count(max_connections);
        Self {
            slot_mask: slots - 1,
            batch: (slots / SWEEP_TICKS_PER_PASS).clamp(1, MAX_SWEEP_BATCH),
        }
    }

    /// How long one walk over every slot takes, in nanoseconds: how late past its timeout a
    /// connection can be forgotten.
    pub fn pass_ns(&self) -> u64 {
        let slots = u64::from(self.slot_mask) + 1;
        slots.div_ceil(u64::from(self.batch.max(1))) * SWEEP_TICK_NS
    }
}

/// `EXPIRY_SLOTS`'s size for a table of `max_connections`.
pub fn slot_count(max_connections: u32) -> u32 {
    max_connections
        .max(1)
        .saturating_mul(2)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// Where a tuple's slot search starts. Not the map's own hash: only spread matters, and the
/// slots are probed in order from here.
#[inline(always)]
pub fn home_slot(key: &FlowKey, mask: u32) -> u32 {
    let ports = (u32::from(key.src_port) << 16) | u32::from(key.dst_port);
    let mut h = key.src_addr ^ key.dst_addr.rotate_left(11) ^ ports.rotate_left(22);
    h ^= u32::from(key.proto) << 7;
    // murmur3's finaliser: every input bit moves every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h & mask
}

/// The owner word of a claimed slot: odd (ready), with whether the key is a router tuple's
/// and a random token, so a slot freed and claimed again is never freed by the old owner.
#[inline(always)]
pub fn slot_owner(token: u32, router: bool) -> u64 {
    (u64::from(token) << 2) | if router { SLOT_ROUTER } else { 0 } | SLOT_READY
}

/// Whether a slot's owner word names a tuple ready to be looked at.
#[inline(always)]
pub fn slot_ready(owner: u64) -> bool {
    owner & SLOT_READY != 0
}

/// Whether a ready slot holds a tuple of the router's own (a `CT_IN` key).
#[inline(always)]
pub fn slot_is_router(owner: u64) -> bool {
    owner & SLOT_ROUTER != 0
}

/// The token a connection keeps (`CtOut::expiry_token`) to free its slot.
#[inline(always)]
pub fn slot_token(owner: u64) -> u32 {
    (owner >> 2) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        FlowKey::new(
            0xc0a8_0000 | (i & 0xff),
            0xc612_0000 | (i >> 8),
            (1024 + i % 60_000) as u16,
            443,
            6,
        )
    }

    #[test]
    fn slots_are_twice_the_table_rounded_up() {
        assert_eq!(slot_count(65_536), 131_072);
        assert_eq!(slot_count(2048), 4096);
        assert_eq!(slot_count(1000), 2048);
        assert_eq!(slot_count(0), 2);
        assert_eq!(slot_count(u32::MAX), 1 << 31);
    }

    #[test]
    fn a_pass_is_two_seconds_until_the_slice_is_capped() {
        let small = Sweep::for_connections(65_536);
        assert_eq!(small.slot_mask, 131_071);
        assert_eq!(small.batch, 6553);
        assert!(small.pass_ns() <= 2_100_000_000, "{}", small.pass_ns());
        let large = Sweep::for_connections(1 << 20);
        assert_eq!(large.batch, MAX_SWEEP_BATCH);
        assert_eq!(large.pass_ns(), 12_800_000_000);
        let tiny = Sweep::for_connections(4);
        assert_eq!(tiny.batch, 1);
    }

    #[test]
    fn owner_words_say_ready_and_kind() {
        for (token, router) in [(0, false), (7, true), (u32::MAX, false), (u32::MAX, true)] {
            let owner = slot_owner(token, router);
            assert!(slot_ready(owner));
            assert_eq!(slot_is_router(owner), router);
            assert_eq!(slot_token(owner), token);
            assert_ne!(owner, SLOT_FREE);
            assert_ne!(owner, SLOT_BUSY);
        }
        assert!(!slot_ready(SLOT_FREE));
        assert!(!slot_ready(SLOT_BUSY));
    }

    /// Half-full slots with linear probing: no tuple needs anywhere near `SLOT_PROBES` tries,
    /// even for keys as alike as one LAN's hosts talking to one server.
    #[test]
    fn half_full_slots_leave_short_probe_runs() {
        let connections = 1u32 << 15;
        let sweep = Sweep::for_connections(connections);
        let mut taken = vec![false; sweep.slot_mask as usize + 1];
        let mut longest = 0;
        for i in 0..connections {
            let home = home_slot(&key(i), sweep.slot_mask);
            let mut probes = 0;
            while taken[((home + probes) & sweep.slot_mask) as usize] {
                probes += 1;
            }
            taken[((home + probes) & sweep.slot_mask) as usize] = true;
            longest = longest.max(probes + 1);
        }
        assert!(longest < SLOT_PROBES, "a tuple needed {longest} probes");
    }
}
