//! The HTTP endpoint: Prometheus metrics and the JSON API that `pcc-ctl status` and
//! `pcc-ctl flows` read.
pub mod api;
pub mod metrics;
