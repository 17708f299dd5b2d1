//! What talks to the kernel: netlink, the dataplane (loading, attaching, maps, pins), the
//! forwarding guard, interface locks, the conntrack sweep, offloads, route mirroring.
pub mod conntrack;
pub mod dataplane;
pub mod default_routes;
pub mod guard;
pub mod lock;
pub mod maps;
pub mod netlink;
pub mod offload;
pub mod peer;
pub mod pin;
pub mod routes;
