//! pcc's controller: learns the ports from the kernel, loads and feeds the XDP dataplane,
//! collects expired connections and serves metrics. `main.rs` is the command line on top.
//!
//! By role:
//! - `cli`: the command line (clap), nothing else; `config`: `up`'s arguments as one checked
//!   `Config` with each WAN's settings (nothing below it sees clap).
//! - `daemon`: `pcc-ctl up`: the start-up order, the event loop, link following.
//! - `balance`: what decides where connections go: the WAN view, policies, quotas, health,
//!   failover.
//! - `kernel`: what talks to the kernel: netlink, the dataplane and its maps and pins, the
//!   forwarding guard, interface locks, the conntrack sweep, offloads, route mirroring.
//! - `http`: the metrics and API endpoint.
//! - `commands`: the short-lived subcommands (status, flows, quota, down).
//! - `shared`: what the daemon and the HTTP endpoint share, below both; `sync`: the one way
//!   their mutexes are locked.
pub mod balance;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod http;
pub mod kernel;
pub mod shared;
pub mod sync;

// Short paths for what the program tests and pcc-bench's test bed use
// (`pcc_ctl::dataplane::Role`, `pcc_ctl::failover::reset_wan`, `pcc_ctl::maps::Maps`).
pub use balance::failover;
pub use kernel::{dataplane, maps};
