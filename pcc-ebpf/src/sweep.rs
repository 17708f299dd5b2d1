//! Expiry in the dataplane itself: every tracked tuple holds a slot of `EXPIRY_SLOTS`, and one
//! `bpf_timer` walks the slots a slice at a time, forgetting what has been idle too long
//! (`pcc_common::expiry` has the sizes and why). The table empties by itself with the
//! controller dead, as nf_conntrack's own garbage collector does without user space.
//!
//! A slot's owner word goes free -> busy (claimed, key being written) -> ready (owner word
//! with a token) -> free, each step one compare-and-exchange: CPUs claim slots at once, the
//! sweep frees a slot whose tuple is gone while a packet may forget it too, and BPF atomics
//! are full barriers, so the key is written before the slot reads as ready on every
//! architecture.
use core::{ffi::c_void, intrinsics::AtomicOrdering};

use aya_ebpf::helpers::{
    bpf_get_prandom_u32, bpf_loop, bpf_timer_init, bpf_timer_set_callback, bpf_timer_start,
};
use pcc_common::{
    CtEvent, FlowKey, LAN_ROUTER, SweepState, bpf_timer,
    expiry::{self, SLOT_BUSY, SLOT_FREE, SLOT_PROBES, SWEEP_TICK_NS},
};

use crate::{CONFIG, CT_IN, CT_OUT, EXPIRY_SLOTS, SWEEP, conntrack};

const CLOCK_MONOTONIC: u64 = 1;
const EBUSY: i64 = 16;

/// `*p = new` if `*p == old`; returns what `*p` was. One BPF_CMPXCHG.
///
/// # Safety
/// `p` points into a live map value, 8-byte aligned.
#[inline(always)]
unsafe fn compare_exchange(p: *mut u64, old: u64, new: u64) -> u64 {
    // SAFETY: the caller's guarantee.
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { AtomicOrdering::SeqCst },
            { AtomicOrdering::SeqCst },
        >(p, old, new)
        .0
    }
}

/// A slot claimed for a tuple, busy (the sweep skips it) until it is published or abandoned,
/// with the token its owner word will carry once ready.
#[derive(Clone, Copy)]
pub struct Claimed {
    pub index: u32,
    pub token: u32,
}

impl Claimed {
    /// Hands the slot to the sweep, its tuple now in its table (`router`: a `CT_IN` key).
    #[inline(always)]
    pub fn publish(self, router: bool) {
        if let Some(slot) = EXPIRY_SLOTS.get_ptr_mut(self.index) {
            // SAFETY: a live array element; only its owner word changes.
            unsafe {
                compare_exchange(
                    &raw mut (*slot).owner,
                    SLOT_BUSY,
                    expiry::slot_owner(self.token, router),
                )
            };
        }
    }

    /// Frees the slot again: its tuple did not go in.
    #[inline(always)]
    pub fn abandon(self) {
        free_slot(self.index, SLOT_BUSY);
    }
}

/// Claims a free slot for `key`, probing from its home slot. `None`: no free slot within
/// `SLOT_PROBES`, which at most half-full slots means the table itself is all but full.
#[inline(always)]
pub fn claim_slot(key: &FlowKey, slot_mask: u32) -> Option<Claimed> {
    start();
    let home = expiry::home_slot(key, slot_mask);
    for probe in 0..SLOT_PROBES {
        let index = home.wrapping_add(probe) & slot_mask;
        let slot = EXPIRY_SLOTS.get_ptr_mut(index)?;
        // SAFETY: a live array element; its owner word only changes by compare-and-exchange,
        // and its key only while the owner word is busy and ours.
        unsafe {
            let owner = &raw mut (*slot).owner;
            if core::ptr::read_volatile(owner) != SLOT_FREE
                || compare_exchange(owner, SLOT_FREE, SLOT_BUSY) != SLOT_FREE
            {
                continue;
            }
            (*slot).key = *key;
        }
        // SAFETY: helper without arguments.
        let token = unsafe { bpf_get_prandom_u32() };
        return Some(Claimed { index, token });
    }
    None
}

/// Frees a slot if `owner` still holds it (a slot freed and claimed again keeps its new owner).
#[inline(always)]
pub fn free_slot(index: u32, owner: u64) {
    if let Some(slot) = EXPIRY_SLOTS.get_ptr_mut(index) {
        // SAFETY: a live array element; only its owner word changes.
        unsafe { compare_exchange(&raw mut (*slot).owner, owner, SLOT_FREE) };
    }
}

/// Starts the sweep's timer once: the first new tuple does it, so a restarted controller that
/// adopts the pinned maps finds it running, and a dataplane with nothing tracked never wakes.
/// A timer the kernel could not allocate is tried again by the next new tuple.
#[inline(always)]
fn start() {
    let Some(state) = SWEEP.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the single element of SWEEP; `armed` is a plain flag (two CPUs starting the
    // timer at once both succeed: init answers EBUSY to the second, start re-arms).
    unsafe {
        if core::ptr::read_volatile(&raw const (*state).armed) != 0 {
            return;
        }
        let timer = (&raw mut (*state).timer).cast::<aya_ebpf::bindings::bpf_timer>();
        let map = (&raw const SWEEP).cast_mut().cast::<c_void>();
        let init = bpf_timer_init(timer, map, CLOCK_MONOTONIC);
        if (init != 0 && init != -EBUSY)
            || bpf_timer_set_callback(timer, tick as *mut c_void) != 0
            || bpf_timer_start(timer, SWEEP_TICK_NS, 0) != 0
        {
            conntrack::count_event(CtEvent::TimerFailed);
            return;
        }
        (*state).armed = 1;
    }
}

/// Where one wake-up of the sweep is: on the timer callback's stack, shared with each step.
#[repr(C)]
struct Walk {
    cursor: u32,
    slot_mask: u32,
    now: u64,
}

/// The sweep's timer: looks at the next `Config::sweep.batch` slots and wakes again in
/// `SWEEP_TICK_NS`. The verifier wants 0 back.
extern "C" fn tick(_map: *mut c_void, _key: *mut u32, state: *mut SweepState) -> i32 {
    // SAFETY: the timer's own element of SWEEP; only this callback moves the cursor.
    unsafe {
        if let Some(cfg) = CONFIG.get(0) {
            let mut walk = Walk {
                cursor: (*state).cursor,
                slot_mask: cfg.sweep.slot_mask,
                now: conntrack::now_ns(),
            };
            // bpf_loop: the verifier checks `step` once, whatever the slice's length.
            bpf_loop(
                cfg.sweep.batch,
                step as *mut c_void,
                (&raw mut walk).cast::<c_void>(),
                0,
            );
            (*state).cursor = walk.cursor;
        }
        // Always again: `armed` says the timer runs, and nothing else would restart it.
        bpf_timer_start(
            (&raw mut (*state).timer).cast::<aya_ebpf::bindings::bpf_timer>(),
            SWEEP_TICK_NS,
            0,
        );
    }
    0
}

/// One slot of the slice; 0 goes on with the next.
extern "C" fn step(_index: u64, walk: *mut Walk) -> i64 {
    // SAFETY: the caller's `Walk`, on its stack.
    let walk = unsafe { &mut *walk };
    let index = walk.cursor & walk.slot_mask;
    walk.cursor = walk.cursor.wrapping_add(1);
    visit(index, walk.now);
    0
}

/// Looks at one slot: a tuple idle past its timeout is forgotten; a slot whose tuple is gone
/// (forgotten by the controller, or its key taken by a newer connection with its own slot) is
/// freed.
#[inline(always)]
fn visit(index: u32, now: u64) {
    let (Some(slot), Some(cfg)) = (EXPIRY_SLOTS.get_ptr_mut(index), CONFIG.get(0)) else {
        return;
    };
    // SAFETY: a live array element. Most slots are free: a plain read passes them without
    // writing their cache line. A ready one is read again by a compare-and-exchange that
    // changes nothing, a barrier, so the key read after it is the one its owner wrote.
    let (owner, key) = unsafe {
        let owner = &raw mut (*slot).owner;
        if !expiry::slot_ready(core::ptr::read_volatile(owner)) {
            return;
        }
        let owner = compare_exchange(owner, SLOT_FREE, SLOT_FREE);
        (owner, (*slot).key)
    };
    if !expiry::slot_ready(owner) {
        return;
    }
    if expiry::slot_is_router(owner) {
        // SAFETY: copied out at once.
        match unsafe { CT_IN.get(&key) }.copied() {
            Some(tuple) if tuple.lan_id == LAN_ROUTER => {
                if cfg.timeouts.router_tuple_expired(key.proto, &tuple, now) {
                    let _ = CT_IN.remove(&key);
                    free_slot(index, owner);
                    conntrack::count_event(CtEvent::Expired);
                }
            }
            _ => free_slot(index, owner),
        }
        return;
    }
    // SAFETY: copied out at once.
    let Some(out) = (unsafe { CT_OUT.get(&key) }).copied() else {
        free_slot(index, owner);
        return;
    };
    if out.expiry_slot != index || out.expiry_token != expiry::slot_token(owner) {
        free_slot(index, owner);
        return;
    }
    // SAFETY: copied out at once.
    let reply = unsafe { CT_IN.get(&key.reply_key(out.nat_addr, out.nat_port)) }.copied();
    // A connection whose reply half is gone cannot carry traffic back: forgotten too.
    let expired = reply.is_none_or(|r| cfg.timeouts.expired(key.proto, &out, &r, now));
    if expired {
        conntrack::forget(&key, &out);
        conntrack::count_event(CtEvent::Expired);
    }
}

/// Records a tuple of the router's own in `CT_IN` with an expiry slot. The error is the
/// insert's (`-EEXIST`: another CPU or a mapping got there first), or 0 when no slot was free
/// (the tuple then stays unrecorded, as with a full table).
#[inline(always)]
pub fn record_router_tuple(key: &FlowKey, entry: &pcc_common::CtIn) -> Result<(), i32> {
    let Some(cfg) = CONFIG.get(0) else {
        return Err(0);
    };
    let Some(claimed) = claim_slot(key, cfg.sweep.slot_mask) else {
        return Err(0);
    };
    match CT_IN.insert(key, entry, aya_ebpf::bindings::BPF_NOEXIST as u64) {
        Ok(()) => {
            claimed.publish(true);
            Ok(())
        }
        Err(e) => {
            claimed.abandon();
            Err(e)
        }
    }
}

const _: () = assert!(size_of::<bpf_timer>() == size_of::<aya_ebpf::bindings::bpf_timer>());
