//! pcc test lab: network namespaces with LAN clients, the router (where pcc-ctl runs), two
//! ISPs and an "internet" with many server addresses, plus the services and probes the
//! integration tests (`tests/tests/*.rs`) and `cargo xtask lab` use.
//!
//! Everything runs in namespaces named `<prefix>-<node>` (prefix `pcc` + 5 hex digits, unique
//! per lab) with addresses from 198.18.0.0/15 and 203.0.113.0/24 only. Dropping the [`Lab`]
//! kills its processes and deletes its namespaces; labs of a killed process are removed by the
//! next [`Lab::builder`]`.build()` (see [`reap_stale_labs`]).

pub mod bench;
pub mod bench_forward;
pub mod clinic_bench;
pub mod controller_bench;
pub mod health;
pub mod lab;
pub mod metrics;
pub mod nat_load;
pub mod pcc;
pub mod proc;
pub mod scenario;
pub mod services;
pub mod stun;
pub mod udp_peer;

pub use lab::{
    BRANCH_HOST, BRANCH_NET, BRANCH_PEER, ISP_ADDRS, LAN_GATEWAY, LAN_NET, Lab, LabBuilder,
    LinkStats, MODEM_ADDR, VPN_ADDR, WAN_ADDRS, WAN_NAMES, is_root, lab_leftovers, reap_stale_labs,
    wan_of_addr,
};
pub use metrics::Metrics;
pub use pcc::{PccExit, PccHandle, pcc_ctl_path, workspace_root};
pub use proc::LabProcess;
pub use services::{Download, HttpLogEntry, TestFile, Transfer, UdpLogEntry, UdpReply, Upload};

/// The python3 the lab's scripts run with (Debian's, which has scapy).
pub fn services_python() -> &'static str {
    services::python()
}

/// Returns from the calling test (after a `SKIP …` line on stderr, shown even when libtest
/// captures output) unless we run as root.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            // Straight to fd 2: libtest captures `eprintln!` of passing tests.
            use ::std::io::Write as _;
            let _ = writeln!(
                ::std::io::stderr(),
                "SKIP {}: needs root (creates network namespaces)",
                ::std::thread::current().name().unwrap_or(module_path!())
            );
            return;
        }
    };
}

/// `"on"` or `"off"`, for test names and messages (e.g. the kernel's forwarding).
pub fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Failed checks of a test, collected so that one run reports all of them at once.
#[derive(Debug, Default)]
pub struct Checks(Vec<String>);

impl Checks {
    /// Records `what` as failed unless `ok`.
    pub fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.fail(what());
        }
    }

    /// Records a failed check.
    pub fn fail(&mut self, what: String) {
        eprintln!("FAILED: {what}");
        self.0.push(what);
    }

    /// Panics with every failed check, if any.
    pub fn finish(self, name: &str) {
        assert!(
            self.0.is_empty(),
            "{name}: {} check(s) failed:\n- {}",
            self.0.len(),
            self.0.join("\n- ")
        );
    }
}
