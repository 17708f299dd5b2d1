//! Pinned state, so the dataplane outlives its controller (Katran's and Cilium's approach):
//! the maps and the XDP links live in bpffs under `/sys/fs/bpf/pcc/<first LAN>/`. If the
//! controller dies (SIGKILL, crash, upgrade) the attached programs keep forwarding with the
//! conntrack they have, and the next `pcc-ctl up` with the same interfaces loads its programs
//! against the same maps and swaps them into the same links atomically (`bpf_link_update`),
//! so no established connection notices. A clean exit (SIGINT/SIGTERM) or `pcc-ctl down`
//! removes the pins, which detaches everything.
//!
//! What the pinned maps were made for is recorded in `/run/pcc/<first LAN>.pinned.json`
//! (bpffs holds no plain files; `/run` is a tmpfs, gone at reboot like bpffs): the interfaces,
//! the conntrack capacity and the map layout. Anything else may change across a restart.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use pcc_common::{
    BindKey, Binding, Config, Counter, CtEvent, CtIn, CtOut, ExpirySlot, FlowKey, FragKey,
    FragPorts, LanInfo, Owner, PublicKey, SlotTable, SweepState, WanCounters, WanInfo,
    route::{Neighbour, NeighbourKey, Route},
};
use serde::{Deserialize, Serialize};

/// Root of every instance's pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/pcc";
const STATE_DIR: &str = "/run/pcc";

/// The maps that are pinned: all of the dataplane's own.
pub const PINNED_MAPS: [&str; 22] = [
    "CONFIG",
    "WANS",
    "LANS",
    "SLOTS",
    "DEVMAP",
    "CT_OUT",
    "CT_IN",
    "FRAGS",
    "STATS",
    "WAN_STATS",
    "NTH_TURN",
    "POLICIES",
    "ROUTES",
    "NEIGHBOURS",
    "NEIGHBOURS_WANTED",
    "NAT_BIND_OUT",
    "NAT_BIND_IN",
    "HOST_CONNECTIONS",
    "RECENT",
    "CT_EVENTS",
    "EXPIRY_SLOTS",
    "SWEEP",
];

/// What a set of pins was made for. Adoption needs all of it equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedState {
    /// WANs in `wan_id` order (backups included), LANs in `lan_id` order.
    pub wans: Vec<String>,
    pub lans: Vec<String>,
    pub max_connections: u32,
    /// Sizes of every map key and value and the counter count: a pcc whose map types differ
    /// cannot share the maps.
    pub layout: String,
}

/// The map layout of this build.
pub fn layout() -> String {
    format!(
        "flow {} ct_out {} ct_in {} frag {}/{} config {} wan {} lan {} slots {} wan_counters {} counters {} route {} neighbour {}/{} binding {}/{}/{}/{} ct_events {} expiry_slot {} sweep {}",
        size_of::<FlowKey>(),
        size_of::<CtOut>(),
        size_of::<CtIn>(),
        size_of::<FragKey>(),
        size_of::<FragPorts>(),
        size_of::<Config>(),
        size_of::<WanInfo>(),
        size_of::<LanInfo>(),
        size_of::<SlotTable>(),
        size_of::<WanCounters>(),
        Counter::COUNT,
        size_of::<Route>(),
        size_of::<NeighbourKey>(),
        size_of::<Neighbour>(),
        size_of::<BindKey>(),
        size_of::<Binding>(),
        size_of::<PublicKey>(),
        size_of::<Owner>(),
        CtEvent::COUNT,
        size_of::<ExpirySlot>(),
        size_of::<SweepState>(),
    )
}

/// One instance's pin directory and state file, named after its first LAN.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
    state: PathBuf,
    lan: String,
}

impl Pins {
    pub fn for_lan(first_lan: &str) -> Pins {
        Pins {
            dir: Path::new(PIN_ROOT).join(first_lan),
            state: Path::new(STATE_DIR).join(format!("{first_lan}.pinned.json")),
            lan: first_lan.to_string(),
        }
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn link_path(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("link_{interface}"))
    }

    /// The TC egress hook's link of WAN `interface` (`:` is in no interface name, and bpffs
    /// refuses `.` in a pin's name).
    pub fn egress_link_path(&self, interface: &str) -> PathBuf {
        self.dir.join(format!("link_{interface}:egress"))
    }

    /// Whether a previous controller left pinned maps here.
    pub fn exist(&self) -> bool {
        self.map_path("CT_OUT").exists()
    }

    pub fn read_state(&self) -> Result<Option<PinnedState>> {
        match fs::read_to_string(&self.state) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("{} is not pcc's pinned state", self.state.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", self.state.display())),
        }
    }

    pub fn write_state(&self, state: &PinnedState) -> Result<()> {
        fs::create_dir_all(STATE_DIR).with_context(|| format!("cannot create {STATE_DIR}"))?;
        fs::write(&self.state, serde_json::to_string_pretty(state)?)
            .with_context(|| format!("cannot write {}", self.state.display()))
    }

    /// Refuses to adopt pins made for something else, saying how to start afresh.
    pub fn check_adoptable(&self, want: &PinnedState) -> Result<()> {
        let fresh = format!(
            "run `pcc-ctl down --lan {}` first (its connections end)",
            self.lan
        );
        let Some(have) = self.read_state()? else {
            bail!(
                "{} holds pinned maps but no record of what they were made for ({} is missing); {fresh}",
                self.dir.display(),
                self.state.display()
            );
        };
        let differs = |what: &str, a: String, b: String| {
            anyhow::anyhow!(
                "the running dataplane in {} was set up with {what} {a}, not {b}: it cannot be adopted; {fresh}",
                self.dir.display()
            )
        };
        if have.wans != want.wans || have.lans != want.lans {
            return Err(differs(
                "interfaces",
                format!(
                    "--wan/--backup {} --lan {}",
                    have.wans.join(","),
                    have.lans.join(",")
                ),
                format!("{} / {}", want.wans.join(","), want.lans.join(",")),
            ));
        }
        if have.max_connections != want.max_connections {
            return Err(differs(
                "--max-connections",
                have.max_connections.to_string(),
                want.max_connections.to_string(),
            ));
        }
        if have.layout != want.layout {
            return Err(differs(
                "another pcc version's map layout",
                have.layout,
                want.layout.clone(),
            ));
        }
        Ok(())
    }

    /// Removes every pin (links first: that detaches the programs) and the state file. A
    /// missing pin is fine; returns what was removed.
    pub fn remove_all(&self) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        if let Ok(entries) = fs::read_dir(&self.dir) {
            let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            // Links first, so nothing runs on half-removed maps.
            paths.sort_by_key(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("link_"))
            });
            for p in paths {
                if fs::remove_file(&p).is_ok() {
                    removed.push(p);
                }
            }
        }
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_file(&self.state);
        // The shared parent too, if no other LAN's controller has pins there: the machine is
        // left as it was. (remove_dir refuses a directory that is not empty.)
        if let Some(parent) = self.dir.parent() {
            let _ = fs::remove_dir(parent);
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PinnedState {
        PinnedState {
            wans: vec!["wan0".into(), "wan1".into()],
            lans: vec!["lan0".into()],
            max_connections: 65536,
            layout: layout(),
        }
    }

    #[test]
    fn adoption_needs_the_same_interfaces_capacity_and_layout() {
        let dir = std::env::temp_dir().join(format!("pcc-pin-test-{}", std::process::id()));
        let pins = Pins {
            dir: dir.join("bpf"),
            state: dir.join("state.json"),
            lan: "lan0".into(),
        };
        fs::create_dir_all(&dir).unwrap();
        let err = pins.check_adoptable(&state()).unwrap_err().to_string();
        assert!(err.contains("no record"), "{err}");
        fs::write(&pins.state, serde_json::to_string(&state()).unwrap()).unwrap();
        pins.check_adoptable(&state()).expect("same configuration");
        let mut other = state();
        other.max_connections = 1000;
        let err = pins.check_adoptable(&other).unwrap_err().to_string();
        assert!(
            err.contains("--max-connections 65536, not 1000")
                && err.contains("pcc-ctl down --lan lan0"),
            "{err}"
        );
        let mut other = state();
        other.wans.reverse();
        assert!(
            pins.check_adoptable(&other).is_err(),
            "WAN order is wan_id order"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
