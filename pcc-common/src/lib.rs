//! Types shared by the XDP dataplane and the controller, and the pure logic both sides rely on.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding so the eBPF and host layouts
//! agree byte for byte; `const` asserts below pin the sizes. Addresses and ports inside map
//! entries are stored in network byte order, exactly as they appear on the wire, so the
//! dataplane never swaps bytes on the fast path.
#![cfg_attr(not(feature = "std"), no_std)]

/// `unsafe impl aya::Pod` for each listed type. Every type listed must be `#[repr(C)]` plain
/// data with explicit padding fields (no implicit padding bytes, no pointers, no niches); the
/// `// SAFETY:` comment at each use says so for its types.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {$(
        // SAFETY: the caller lists only `#[repr(C)]` plain data with explicit padding fields,
        // so every byte pattern is a valid value (see the macro's documentation).
        unsafe impl aya::Pod for $t {}
    )+};
}

pub mod classify;
pub mod conntrack;
pub mod counters;
pub mod csum;
pub mod expiry;
pub mod failover;
pub mod generator;
pub mod icmp;
pub mod maps;
pub mod method;
pub mod natport;
pub mod proto;
pub mod ratelimit;
pub mod route;
pub mod tcp;

#[cfg(feature = "std")]
pub mod health;
#[cfg(feature = "std")]
pub mod packet;
#[cfg(feature = "std")]
pub mod qos;
#[cfg(feature = "std")]
pub mod slots;

pub use classify::Classifier;
pub use counters::{Counter, CtEvent};
pub use maps::*;
pub use method::Method;
pub use natport::NatPortRange;
