//! What decides where new connections go: each WAN's view, source-subnet policies, quotas,
//! health probing, and the failover grace of WANs that went down.
pub mod failover;
pub mod health;
pub mod policy;
pub mod quota;
pub mod wan;
