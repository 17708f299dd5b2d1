//! `pcc-ctl up`: learn the ports, load and attach the dataplane, keep it fed until a signal.
mod installed;
mod links;
pub mod relink;
mod serve;
pub mod weights;

use std::{
    io::Write as _,
    net::Ipv4Addr,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicUsize},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::FutureExt as _;
use pcc_common::{Config as DataplaneConfig, WanInfo};
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::{
    installed::Installed,
    links::{ip_be, mtu16, refresh_links},
    serve::{Owned, serve},
};
use crate::{
    balance::{
        failover::Failover,
        health::{Clock, HealthTable, Probers, WanHealth},
        policy::{self, ConfigFile},
        quota::{self, Meter},
        wan::{self, WanView},
    },
    config::{Config, XdpMode},
    daemon::relink::LanView,
    http,
    kernel::{
        conntrack::GcReport,
        dataplane::{Attached, Dataplane, Role},
        guard::{ForwardGuard, GuardSpec},
        lock::InterfaceLocks,
        netlink::{Ipv4Net, Link, Netlink},
        offload::Offloads,
        peer,
        pin::{self, PinnedState, Pins},
        routes::Routing,
    },
    shared::Shared,
};

/// Quota usage goes to disk every this many refreshes (seconds): a crash loses at most that.
pub(super) const QUOTA_SAVE_TICKS: u64 = 5;
/// How long start-up waits for gateways to resolve before going on without them.
const ARP_WAIT: Duration = Duration::from_secs(3);

/// `pcc-ctl up` loads eBPF programs and attaches them: refused before anything else for
/// anyone but root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "pcc-ctl up must run as root (it loads eBPF programs and attaches them to interfaces)"
        );
    }
    Ok(())
}

/// bpffs must be mounted for pinned state; mount it like systemd does if it is missing.
fn ensure_bpffs() -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = c"/sys/fs/bpf";
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let _ = std::fs::create_dir_all("/sys/fs/bpf");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf and cannot be mounted: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

struct Learned {
    wans: Vec<(Link, Ipv4Net, Ipv4Addr)>,
    lans: Vec<(Link, Ipv4Net)>,
}

async fn learn(nl: &Netlink, config: &Config) -> Result<Learned> {
    let mut wans = Vec::new();
    for wan in &config.wans {
        let name = &wan.name;
        let link = nl.link(name).await?;
        let net = nl
            .ipv4_addr(link.ifindex)
            .await?
            .with_context(|| format!("interface {name} has no IPv4 address"))?;
        let gateway = match wan.gateway {
            Some(g) => g,
            None => nl.default_gateway(link.ifindex).await?.with_context(|| {
                format!("WAN {name} has no gateway: no default route through it (give one with --gateway {name}=ADDR)")
            })?,
        };
        wans.push((link, net, gateway));
    }
    let mut lans = Vec::new();
    for name in &config.lans {
        let link = nl.link(name).await?;
        let net = nl
            .ipv4_addr(link.ifindex)
            .await?
            .with_context(|| format!("interface {name} has no IPv4 address"))?;
        lans.push((link, net));
    }
    Ok(Learned { wans, lans })
}

/// SIGINT and SIGTERM, caught from the start: one that arrives while the programs are being
/// attached (or the gateways resolved) ends the start-up through the same clean-up as a stop,
/// instead of killing the process with everything left attached.
pub struct Stop {
    sigterm: Signal,
    sigint: Signal,
}

impl Stop {
    fn new() -> Result<Self> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            sigint: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    pub(super) async fn recv(&mut self) {
        tokio::select! {
            _ = self.sigterm.recv() => {}
            _ = self.sigint.recv() => {}
        }
    }

    /// Whether a signal has arrived, without waiting.
    pub(super) fn requested(&mut self) -> bool {
        self.recv().now_or_never().is_some()
    }
}

/// Runs `pcc-ctl up` with `config` (checked, and the caller root: `require_root`).
pub async fn run(config: Config) -> Result<()> {
    let mut stop = Stop::new()?;
    let _locks = InterfaceLocks::acquire(&config.interfaces())?;
    ensure_bpffs()?;
    let nl = Netlink::connect()?;
    let learned = learn(&nl, &config).await?;
    let config_file = match &config.policy_file {
        Some(path) => {
            let wan_names: Vec<String> = learned
                .wans
                .iter()
                .map(|(l, _, _)| l.name.clone())
                .collect();
            let lan_nets: Vec<Ipv4Net> = learned.lans.iter().map(|(_, n)| *n).collect();
            policy::load(path, &wan_names, &lan_nets)?
        }
        None => ConfigFile::default(),
    };
    let ConfigFile { policies, quotas } = config_file;

    let pins = Pins::for_lan(config.first_lan());
    let want = PinnedState {
        wans: learned
            .wans
            .iter()
            .map(|(l, _, _)| l.name.clone())
            .collect(),
        lans: learned.lans.iter().map(|(l, _)| l.name.clone()).collect(),
        max_connections: config.max_connections,
        layout: pin::layout(),
    };
    let adopting = pins.exist();
    if adopting {
        // Refused here, before anything is touched: the running dataplane keeps forwarding.
        pins.check_adoptable(&want)?;
    } else {
        pins.remove_all();
    }
    let (dataplane, mut maps) = match Dataplane::load_pinned(config.max_connections, &pins) {
        Ok(loaded) => loaded,
        Err(e) => {
            if !adopting {
                pins.remove_all();
            }
            return Err(e);
        }
    };
    // The whole range of --nat-ports: the router's own tuples are recorded by the TC egress
    // hook, so a mapping never takes one (`local` in pcc-ebpf).
    let dataplane_config = DataplaneConfig {
        classifier: config.classifier as u8,
        lan_count: learned.lans.len() as u8,
        wan_count: learned.wans.len() as u8,
        method: config.method as u8,
        policy_count: policies.len() as u8,
        nat_filtering: config.nat_filtering as u8,
        _pad: [0; 2],
        hash_seed: config.hash_seed,
        nat_ports: config.nat_ports,
        max_connections_per_host: config.max_connections_per_host,
        timeouts: config.timeouts,
        sweep: pcc_common::expiry::Sweep::for_connections(config.max_connections),
    };
    maps.config
        .set(0, dataplane_config, 0)
        .context("cannot write CONFIG")?;
    let mut lans = Vec::new();
    for (lan_id, (link, net)) in learned.lans.iter().enumerate() {
        let lan = LanView::new(lan_id as u32, link, *net);
        relink::write_lan(&mut maps, &lan)?;
        lans.push(lan);
    }
    let mut wans = Vec::new();
    for (wan_id, (link, net, gateway)) in learned.wans.iter().enumerate() {
        maps.devmap
            .set(wan_id as u32, link.ifindex, None, 0)
            .context("cannot write DEVMAP")?;
        let wan_config = &config.wans[wan_id];
        let info = WanInfo {
            ifindex: link.ifindex,
            addr: ip_be(net.addr),
            mac: link.mac,
            gateway_mac: [0; 6],
            mtu: mtu16(link.mtu),
            flags: 0,
        };
        wans.push(WanView {
            name: link.name.clone(),
            wan_id: wan_id as u8,
            weight: wan_config.weight,
            gateway: *gateway,
            backup: wan_config.backup,
            link_ok: false,
            healthy: true,
            up: false,
            state_changes: 0,
            since_unix: wan::unix_now(),
            info,
        });
    }

    // From here on the kernel holds state of ours: clean it up on every exit path.
    let routing = Routing::adopt(&maps, &wans);
    // Also what a killed controller left turned off: turned back on at exit.
    let offloads = Offloads::open(config.first_lan())?;
    let mut installed = Installed::new(pins, dataplane, offloads, routing);
    let result = async {
        let installed = &mut installed;
        installed.pins.write_state(&want)?;
        if config.forward_guard {
            let wan_names: Vec<String> = learned.wans.iter().map(|(l, _, _)| l.name.clone()).collect();
            let lans: Vec<(String, Ipv4Net)> = learned.lans.iter().map(|(l, n)| (l.name.clone(), *n)).collect();
            let spec = GuardSpec { wans: &wan_names, lans: &lans };
            let g = ForwardGuard::install(&spec)?;
            log::debug!("kernel forwarding guarded by nftables table ip {}", g.table());
            installed.guard = Some(g);
        }
        for wan in &wans {
            nl.add_managed_neighbour(wan.info.ifindex, wan.gateway).await?;
            installed.manage((wan.info.ifindex, wan.gateway));
        }
        let deadline = tokio::time::Instant::now() + ARP_WAIT;
        loop {
            refresh_links(&nl, &mut wans).await;
            if wans.iter().all(|w| w.link_ok) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.recv() => {
                    log::info!("stopped while starting");
                    return Ok(());
                }
            }
        }
        for wan in wans.iter_mut() {
            wan.settle();
            wan.state_changes = 0;
        }
        weights::apply(&mut maps, &wans, &policies, config.method)?;
        // After the tables: a subnet never points at a policy table not yet written.
        policy::write_subnets(&mut maps, &policies)?;
        // Before any program runs: from its first packet, what the routing table sends
        // elsewhere is never balanced.
        let maps = Mutex::new(maps);
        installed.routing.refresh(&nl, &maps, &wans).await?;
        let maps = maps.into_inner().unwrap_or_else(PoisonError::into_inner);
        if config.xdp_mode == XdpMode::Generic {
            log::warn!("generic XDP mode: every packet pays for an skb first; use native mode where the driver has it");
        }
        let ports = learned
            .lans
            .iter()
            .map(|(l, _)| (Role::Lan, l))
            .chain(learned.wans.iter().map(|(l, _, _)| (Role::Wan, l)));
        let ports: Vec<_> = ports.collect();
        for (_, link) in &ports {
            peer::warn_partial_checksums(&nl, &link.name, link.ifindex).await;
        }
        let mut adopted = Vec::new();
        let mut attach = installed.ports();
        for (role, link) in ports {
            if attach.attach(role, &link.name, link.ifindex, config.xdp_mode)? == Attached::Adopted {
                adopted.push(link.name.clone());
            }
        }
        if !adopted.is_empty() {
            log::info!(
                "adopted the running dataplane of {} ({} connections kept)",
                adopted.join(","),
                maps.ct_out.keys().count()
            );
        }

        let params = config.probe;
        let health: HealthTable = Arc::new(Mutex::new(
            wans.iter()
                .zip(&config.wans)
                .map(|(w, c)| {
                    let targets = c.probe_targets.clone().unwrap_or_else(|| vec![w.gateway]);
                    WanHealth::new(&targets, config.probe_quorum, params)
                })
                .collect(),
        ));
        let names: Vec<String> = wans.iter().map(|w| w.name.clone()).collect();
        let meter = if quotas.is_empty() {
            None
        } else {
            let file = config.quota_file();
            let counters = |id: u8| maps.wan_counters(id).map_or(0, |c| c.rx_bytes + c.tx_bytes);
            Some(Meter::open(quotas.clone(), &names, &file, counters, quota::unix_now())?)
        };
        let shared = Arc::new(Shared {
            maps: Mutex::new(maps),
            wans: Mutex::new(wans.clone()),
            gc: Mutex::new(GcReport::default()),
            health,
            clock: Clock::new(),
            rates: Mutex::new(vec![(0.0, 0.0); wans.len()]),
            classifier: config.classifier.name().to_string(),
            policies: policies.clone(),
            quota: Mutex::new(meter),
            routes_mirrored: AtomicUsize::new(installed.routing.routes_mirrored()),
            neighbours_mirrored: AtomicUsize::new(installed.routing.neighbours_mirrored()),
            failover_resets: Default::default(),
        });
        let server = http::bind(config.listen, shared.clone()).await?;
        let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut failover = Failover::new(config.failover_grace_secs)?;
        let mut probers = Probers::new(params, shared.health.clone(), shared.clock, health_tx);
        for wan in &wans {
            probers.ensure(wan.wan_id as usize, &wan.name, wan_addr(wan), probe_ident(wan.wan_id, config.nat_ports.min))?;
        }
        let events = Netlink::events()?;
        tokio::spawn(server);
        let wan_ifindexes: Vec<(u8, u32)> = wans.iter().map(|w| (w.wan_id, w.info.ifindex)).collect();
        installed.routes.adopt(&nl, &wan_ifindexes).await;
        installed.routes.follow(&nl, &wans).await;
        log::info!(
            "balancing {} over {} ({} classifier), metrics on http://{}/metrics",
            config.lans.join(","),
            wans.iter().map(|w| format!("{}{}", w.name, if w.up { "" } else { " (down)" })).collect::<Vec<_>>().join(","),
            config.classifier.name(),
            config.listen
        );
        if stop.requested() {
            log::info!("stopped while starting");
            return Ok(());
        }
        println!("pcc-ctl: ready");
        let _ = std::io::stdout().flush();
        let owned = Owned {
            installed,
            lans,
            probers: &mut probers,
            failover: &mut failover,
            stop: &mut stop,
        };
        serve(&nl, &shared, wans, owned, events, health_rx, &config).await
    }
    .await;

    installed.teardown(&nl).await;
    result
}

pub(super) fn wan_addr(wan: &WanView) -> Ipv4Addr {
    Ipv4Addr::from(wan.info.addr.to_ne_bytes())
}

/// The ICMP identifier of a WAN's probes. The TC egress hook records the probes like any
/// socket of the router's, but a LAN host's ping holding the same target and identifier first
/// would keep them in, and a good WAN would look down: below the NAT range no mapping holds
/// one. A NAT range that starts at port 1 leaves no room; any identifier then, as the hook
/// records it at the first probe.
pub(super) fn probe_ident(wan_id: u8, nat_min: u16) -> u16 {
    let seed = std::process::id().wrapping_mul(8) + u32::from(wan_id);
    let span = if nat_min > 1 {
        u32::from(nat_min) - 1
    } else {
        u32::from(u16::MAX)
    };
    (1 + seed % span) as u16
}
