//! pcc's controller: learns the ports from the kernel, loads and feeds the XDP dataplane,
//! collects expired connections and serves metrics. `main.rs` is the command line on top.
pub mod api;
pub mod cli;
pub mod conntrack;
pub mod dataplane;
pub mod down;
pub mod failover;
pub mod guard;
pub mod health;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod offload;
pub mod peer;
pub mod pin;
pub mod policy;
pub mod quota;
pub mod relink;
pub mod routes;
pub mod show;
pub mod up;
pub mod wan;
