//! `pcc-ctl up`: learn the ports, load and attach the dataplane, keep it fed until a signal.
pub mod relink;

use std::{
    io::Write as _,
    net::Ipv4Addr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use futures::{FutureExt as _, StreamExt as _};
use pcc_common::{Config as DataplaneConfig, MAX_WANS, Method, WanInfo};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    balance::failover::Failover,
    balance::health::{Clock, HealthTable, Probers, WanHealth},
    balance::policy::{self, ConfigFile, Policy},
    balance::quota::{self, Meter},
    balance::wan::{self, WanView},
    config::{Config, XdpMode},
    daemon::relink::{LanView, Ports},
    http::metrics::{self, Metrics},
    kernel::conntrack::{self, GcReport},
    kernel::dataplane::{Attached, Dataplane, Role},
    kernel::default_routes::DefaultRoutes,
    kernel::guard::{ForwardGuard, GuardSpec},
    kernel::lock::InterfaceLocks,
    kernel::maps::Maps,
    kernel::netlink::{Ipv4Net, Link, Netlink},
    kernel::offload::{self, Offloads},
    kernel::peer,
    kernel::pin::{self, PinnedState, Pins},
    kernel::routes::{self, Routing},
};

/// Quota usage goes to disk every this many refreshes (seconds): a crash loses at most that.
const QUOTA_SAVE_TICKS: u64 = 5;
/// How often link state and gateway MACs are re-read even without a netlink event.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired connections are collected.
const GC_INTERVAL: Duration = Duration::from_secs(2);
/// How long start-up waits for gateways to resolve before going on without them.
const ARP_WAIT: Duration = Duration::from_secs(3);

/// What the metrics endpoint and the background tasks share.
pub struct Shared {
    pub maps: Mutex<Maps>,
    pub metrics: Metrics,
    pub wans: Mutex<Vec<WanView>>,
    pub gc: Mutex<GcReport>,
    pub health: HealthTable,
    pub clock: Clock,
    /// Per WAN (by `wan_id`): (rx, tx) bits per second over the last second.
    pub rates: Mutex<Vec<(f64, f64)>>,
    pub classifier: String,
    /// Source-subnet policies (`--config`), re-tabled whenever WAN states change.
    pub policies: Vec<Policy>,
    /// Quota usage (`[[quota]]` in `--config`).
    pub quota: Mutex<Option<Meter>>,
    /// Routes of the main table mirrored into the dataplane, and next-hop MACs with them.
    pub routes_mirrored: AtomicUsize,
    pub neighbours_mirrored: AtomicUsize,
}

fn ip_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

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

fn mtu16(mtu: u32) -> u16 {
    mtu.min(u32::from(u16::MAX)) as u16
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

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.sigterm.recv() => {}
            _ = self.sigint.recv() => {}
        }
    }

    /// Whether a signal has arrived, without waiting.
    fn requested(&mut self) -> bool {
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
    let (mut dataplane, mut maps) = match Dataplane::load_pinned(config.max_connections, &pins) {
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
    let mut managed = Vec::new();
    let mut routes = DefaultRoutes::default();
    let mut routing = Routing::adopt(&maps, &wans);
    let mut guard = None;
    // Also what a killed controller left turned off: turned back on at exit.
    let mut offloads = Offloads::open(config.first_lan())?;
    let result = async {
        pins.write_state(&want)?;
        if config.forward_guard {
            let wan_names: Vec<String> = learned.wans.iter().map(|(l, _, _)| l.name.clone()).collect();
            let lans: Vec<(String, Ipv4Net)> = learned.lans.iter().map(|(l, n)| (l.name.clone(), *n)).collect();
            let spec = GuardSpec { wans: &wan_names, lans: &lans };
            let g = ForwardGuard::install(&spec)?;
            log::debug!("kernel forwarding guarded by nftables table ip {}", g.table());
            guard = Some(g);
        }
        for wan in &wans {
            nl.add_managed_neighbour(wan.info.ifindex, wan.gateway).await?;
            managed.push((wan.info.ifindex, wan.gateway));
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
        wan::write_maps(&mut maps, &wans, config.method)?;
        policy::write_subnets(&mut maps, &policies)?;
        policy::write_tables(&mut maps, &policies, &wans, config.method)?;
        // Before any program runs: from its first packet, what the routing table sends
        // elsewhere is never balanced.
        let maps = Mutex::new(maps);
        routing.refresh(&nl, &maps, &wans).await?;
        let maps = maps.into_inner().expect("maps lock poisoned");
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
        let mut attach = Ports { dataplane: &mut dataplane, pins: &pins, offloads: &mut offloads };
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
            metrics: Metrics::new(config.classifier.name())?,
            wans: Mutex::new(wans.clone()),
            gc: Mutex::new(GcReport::default()),
            health,
            clock: Clock::new(),
            rates: Mutex::new(vec![(0.0, 0.0); wans.len()]),
            classifier: config.classifier.name().to_string(),
            policies: policies.clone(),
            quota: Mutex::new(meter),
            routes_mirrored: AtomicUsize::new(routing.routes_mirrored()),
            neighbours_mirrored: AtomicUsize::new(routing.neighbours_mirrored()),
        });
        let server = metrics::bind(config.listen, shared.clone()).await?;
        let (health_tx, health_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut failover = Failover::new(config.failover_grace_secs)?;
        let mut probers = Probers::new(params, shared.health.clone(), shared.clock, health_tx);
        for wan in &wans {
            probers.ensure(wan.wan_id as usize, &wan.name, wan_addr(wan), probe_ident(wan.wan_id, config.nat_ports.min))?;
        }
        let events = Netlink::events()?;
        tokio::spawn(server);
        let wan_ifindexes: Vec<(u8, u32)> = wans.iter().map(|w| (w.wan_id, w.info.ifindex)).collect();
        routes.adopt(&nl, &wan_ifindexes).await;
        routes.follow(&nl, &wans).await;
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
            ports: Ports { dataplane: &mut dataplane, pins: &pins, offloads: &mut offloads },
            lans,
            guard: guard.as_mut(),
            routes: &mut routes,
            probers: &mut probers,
            managed: &mut managed,
            routing: &mut routing,
            failover: &mut failover,
            stop: &mut stop,
        };
        serve(&nl, &shared, wans, owned, events, health_rx, &config).await
    }
    .await;

    // A clean exit (or a failed start) leaves nothing: removing the link pins, then closing
    // our handles, detaches the programs.
    pins.remove_all();
    drop(dataplane);
    offloads.restore_all(offload::ifindex_of);
    if let Some(g) = guard {
        g.remove();
    }
    routes.restore_all(&nl).await;
    routing.release_all(&nl).await;
    for (ifindex, gateway) in managed {
        if let Err(e) = nl.del_neighbour(ifindex, gateway).await {
            log::warn!("{e:#}");
        }
    }
    result
}

fn wan_addr(wan: &WanView) -> Ipv4Addr {
    Ipv4Addr::from(wan.info.addr.to_ne_bytes())
}

/// The ICMP identifier of a WAN's probes. The TC egress hook records the probes like any
/// socket of the router's, but a LAN host's ping holding the same target and identifier first
/// would keep them in, and a good WAN would look down: below the NAT range no mapping holds
/// one. A NAT range that starts at port 1 leaves no room; any identifier then, as the hook
/// records it at the first probe.
fn probe_ident(wan_id: u8, nat_min: u16) -> u16 {
    let seed = std::process::id().wrapping_mul(8) + u32::from(wan_id);
    let span = if nat_min > 1 {
        u32::from(nat_min) - 1
    } else {
        u32::from(u16::MAX)
    };
    (1 + seed % span) as u16
}

/// What the controller put into the kernel and keeps in step while it runs, and the signals
/// that end the run.
struct Owned<'a> {
    /// The attached programs, their pins and the offloads turned off, for interfaces that come
    /// back as new ones.
    ports: Ports<'a>,
    lans: Vec<LanView>,
    /// The forwarding guard, which names the LAN subnets.
    guard: Option<&'a mut ForwardGuard>,
    routes: &'a mut DefaultRoutes,
    probers: &'a mut Probers,
    /// Gateway neighbour entries we asked the kernel to keep resolved, also those of WANs
    /// re-created or re-addressed while running: all are removed on exit.
    managed: &'a mut Vec<(u32, Ipv4Addr)>,
    /// The main routing table's mirror and the route next hops kept resolved.
    routing: &'a mut Routing,
    /// The grace of WANs that went down, and the resets once it ends.
    failover: &'a mut Failover,
    /// What ends it.
    stop: &'a mut Stop,
}

/// Runs until SIGINT or SIGTERM: follows netlink events and probe results, keeps the maps and
/// default routes in step, collects expired connections.
async fn serve(
    nl: &Netlink,
    shared: &Shared,
    mut wans: Vec<WanView>,
    mut owned: Owned<'_>,
    mut events: impl futures::Stream<Item = ()> + Unpin,
    mut health_rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    config: &Config,
) -> Result<()> {
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut routes_poll = tokio::time::interval(routes::POLL_INTERVAL);
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let timeouts = config.timeouts;
    let mut last_counters: Vec<(u64, u64)> = vec![(0, 0); wans.len()];
    let mut last_sample = tokio::time::Instant::now();
    // The WANs taking new connections when the default routes last followed them (at start).
    let mut in_use: Vec<bool> = wans.iter().map(wan::in_use(&wans)).collect();
    let mut gc_passes: u64 = 0;
    let mut ticks: u64 = 0;
    loop {
        let before = relink::snapshot(&wans);
        // (links re-read, anything the dataplane sees changed)
        let (refreshed, links_changed) = tokio::select! {
            _ = owned.stop.recv() => break,
            Some(()) = events.next() => {
                // A burst of events (a link going down takes its routes and neighbours
                // with it) needs one refresh.
                while let Some(Some(())) = events.next().now_or_never() {}
                (true, refresh_links(nl, &mut wans).await)
            }
            Some(()) = health_rx.recv() => {
                while health_rx.try_recv().is_ok() {}
                (false, false)
            }
            _ = refresh.tick() => {
                sample_rates(shared, &wans, &mut last_counters, &mut last_sample);
                let changed = refresh_links(nl, &mut wans).await;
                ticks += 1;
                (true, changed | follow_spare_capacity(shared, &mut wans, config) | follow_quotas(shared, &mut wans, config, ticks))
            }
            _ = routes_poll.tick() => {
                owned.routing.poll(nl, &shared.maps, &wans).await;
                shared.routes_mirrored.store(owned.routing.routes_mirrored(), Ordering::Relaxed);
                shared.neighbours_mirrored.store(owned.routing.neighbours_mirrored(), Ordering::Relaxed);
                continue;
            }
            _ = at(owned.failover.next_end(&wans)) => {
                owned.failover.reset_ended(shared, &wans);
                continue;
            }
            _ = gc.tick() => {
                gc_passes += 1;
                let scan_orphans = gc_passes.is_multiple_of(conntrack::ORPHAN_SCAN_EVERY);
                let report = conntrack::collect(&mut shared.maps.lock().expect("maps lock poisoned"), &timeouts, conntrack::monotonic_ns(), scan_orphans)?;
                *shared.gc.lock().expect("gc lock poisoned") = report;
                continue;
            }
        };
        // After every link refresh: a WAN waiting for its gateway may get one without a
        // link event.
        let restart = if refreshed {
            let ports = &mut owned.ports;
            for i in relink::follow_lans(nl, shared, ports, config, &mut owned.lans).await {
                let lan = &owned.lans[i];
                if let Some(g) = owned.guard.as_deref_mut()
                    && let Err(e) = g.renumber(&lan.name, lan.net)
                {
                    log::warn!("LAN {}: {e:#}", lan.name);
                }
            }
            relink::follow(nl, shared, ports, config, &before, &mut wans).await
        } else {
            Vec::new()
        };
        for &i in &restart {
            owned.probers.forget(wans[i].wan_id as usize);
            let gateway = (wans[i].info.ifindex, wans[i].gateway);
            if !owned.managed.contains(&gateway) {
                owned.managed.push(gateway);
            }
        }
        let links_changed = links_changed || !restart.is_empty();
        if refreshed {
            // A route, address, link or neighbour event, or WANs re-created or with new
            // gateways: the mirror is refreshed at its next poll.
            owned.routing.mark_dirty();
        }
        if links_changed {
            for wan in &wans {
                if let Err(e) = owned.probers.ensure(
                    wan.wan_id as usize,
                    &wan.name,
                    wan_addr(wan),
                    probe_ident(wan.wan_id, config.nat_ports.min),
                ) {
                    log::warn!("WAN {}: {e:#}", wan.name);
                }
            }
        }
        let mut states_changed = false;
        let mut resolve = Vec::new();
        {
            let mut health = shared.health.lock().expect("health lock poisoned");
            for wan in wans.iter_mut() {
                let h = &mut health[wan.wan_id as usize];
                if wan.up && !wan.link_ok {
                    h.force_down(shared.clock.now_ms());
                }
                wan.healthy = h.is_up();
                if wan.settle() {
                    states_changed = true;
                    if wan.up {
                        log::info!("WAN {} is up", wan.name);
                    } else if !wan.link_ok {
                        log::warn!(
                            "WAN {} is down: link down, no address or gateway {} unresolved",
                            wan.name,
                            wan.gateway
                        );
                    } else {
                        log::warn!("WAN {} is down: {}", wan.name, h.describe());
                        // The gateway may have a new MAC that the kernel's still-"reachable"
                        // entry hides for a minute: resolve it afresh.
                        resolve.push((wan.info.ifindex, wan.gateway));
                    }
                }
            }
        }
        owned.failover.follow(&wans);
        for (ifindex, gateway) in resolve {
            let _ = nl.del_neighbour(ifindex, gateway).await;
            if let Err(e) = nl.add_managed_neighbour(ifindex, gateway).await {
                log::warn!("{e:#}");
            }
        }
        if states_changed || links_changed {
            {
                let maps = &mut shared.maps.lock().expect("maps lock poisoned");
                wan::write_maps(maps, &wans, config.method)?;
                policy::write_tables(maps, &shared.policies, &wans, config.method)?;
                *shared.wans.lock().expect("wans lock poisoned") = wans.clone();
            }
            // On a change of the WANs in use: up/down, or a quota turning a WAN into a backup
            // (a least-loaded weight update changes neither).
            let now_in_use: Vec<bool> = wans.iter().map(wan::in_use(&wans)).collect();
            if now_in_use != in_use {
                owned.routes.follow(nl, &wans).await;
                in_use = now_in_use;
            }
        }
        if states_changed && !wans.iter().any(|w| w.up) {
            log::warn!("no WAN is up: traffic from the LAN is dropped until one returns");
        }
    }
    if let Some(meter) = shared.quota.lock().expect("quota lock poisoned").as_ref()
        && let Err(e) = meter.save()
    {
        log::warn!("{e:#}");
    }
    log::info!("stopping: detaching from {}", config.interfaces().join(","));
    Ok(())
}

/// Sleeps until `deadline`, or forever without one.
async fn at(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Counts quota usage, saves it every few seconds, and applies crossed thresholds; whether a
/// WAN's weight or tier changed.
fn follow_quotas(shared: &Shared, wans: &mut [WanView], config: &Config, ticks: u64) -> bool {
    let mut meter = shared.quota.lock().expect("quota lock poisoned");
    let Some(meter) = meter.as_mut() else {
        return false;
    };
    {
        let maps = shared.maps.lock().expect("maps lock poisoned");
        meter.update(
            |id| maps.wan_counters(id).map_or(0, |c| c.rx_bytes + c.tx_bytes),
            quota::unix_now(),
        );
    }
    if ticks.is_multiple_of(QUOTA_SAVE_TICKS)
        && let Err(e) = meter.save()
    {
        log::warn!("{e:#}");
    }
    let mut weights = [1u32; MAX_WANS];
    let mut backups = [false; MAX_WANS];
    for wan in wans.iter() {
        let i = wan.wan_id as usize;
        weights[i] = config.wans[i].weight;
        backups[i] = config.wans[i].backup;
    }
    meter.apply(wans, &weights, &backups)
}

/// `least-loaded`: sets each WAN's weight from its spare capacity (configured line rate minus
/// the throughput just measured, the busier direction); whether a weight changed.
fn follow_spare_capacity(shared: &Shared, wans: &mut [WanView], config: &Config) -> bool {
    if config.method != Method::LeastLoaded {
        return false;
    }
    let rates = shared.rates.lock().expect("rates lock poisoned").clone();
    let mut line = [0u64; MAX_WANS];
    let mut used = [0u64; MAX_WANS];
    let mut up = [false; MAX_WANS];
    for wan in wans.iter() {
        let i = wan.wan_id as usize;
        line[i] = config.wans[i].line_rate_bps.unwrap_or(0);
        let (rx, tx) = rates.get(i).copied().unwrap_or((0.0, 0.0));
        used[i] = rx.max(tx) as u64;
        up[i] = true;
    }
    let weights = pcc_common::method::spare_weights(&line, &used, &up);
    let mut changed = false;
    for wan in wans.iter_mut() {
        let w = weights[wan.wan_id as usize].max(1);
        // Ignore jitter under 10 %: every change rebuilds the slot table.
        if w.abs_diff(wan.weight) * 10 > wan.weight {
            wan.weight = w;
            changed = true;
        }
    }
    changed
}

/// Bits per second per WAN since the previous sample, from the dataplane's counters.
fn sample_rates(
    shared: &Shared,
    wans: &[WanView],
    last: &mut [(u64, u64)],
    at: &mut tokio::time::Instant,
) {
    let now = tokio::time::Instant::now();
    let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
    *at = now;
    let maps = shared.maps.lock().expect("maps lock poisoned");
    let mut rates = shared.rates.lock().expect("rates lock poisoned");
    for wan in wans {
        let id = wan.wan_id as usize;
        let Ok(c) = maps.wan_counters(wan.wan_id) else {
            continue;
        };
        let (rx, tx) = last[id];
        rates[id] = (
            (c.rx_bytes.saturating_sub(rx)) as f64 * 8.0 / secs,
            (c.tx_bytes.saturating_sub(tx)) as f64 * 8.0 / secs,
        );
        last[id] = (c.rx_bytes, c.tx_bytes);
    }
}

/// Re-reads each WAN's link: carrier, address, MAC, MTU and gateway MAC. Returns whether
/// anything the dataplane sees changed.
async fn refresh_links(nl: &Netlink, wans: &mut [WanView]) -> bool {
    let mut changed = false;
    for wan in wans.iter_mut() {
        let link = nl.link(&wan.name).await.ok();
        let (mut addr, mut resolved) = (None, None);
        if let Some(l) = &link {
            addr = nl.ipv4_addr(l.ifindex).await.ok().flatten();
            resolved = nl
                .neighbour_mac(l.ifindex, wan.gateway)
                .await
                .ok()
                .flatten();
        }
        // An entry being resolved again (or failed once: on a line losing 20 % both ways, all
        // six ARP probes of a re-verification fail ~0.2 % of the time) is no proof that the
        // gateway is gone: keep the MAC this interface had and let the probes decide, as they
        // see a dead gateway within 0.6 s. Only while the link stayed up, though: after a
        // carrier loss (a modem swapped) or a lost address the gateway is resolved afresh.
        let known = link
            .as_ref()
            .is_some_and(|l| l.ifindex == wan.info.ifindex && l.oper_up)
            && wan.link_ok
            && addr.is_some()
            && wan.info.gateway_mac != [0; 6];
        let mac = resolved.or(known.then_some(wan.info.gateway_mac));
        let mut info = wan.info;
        info.gateway_mac = mac.unwrap_or([0; 6]);
        if let Some(l) = &link {
            // A new ifindex: the interface was deleted and created again.
            info.ifindex = l.ifindex;
            info.mac = l.mac;
            info.mtu = mtu16(l.mtu);
        }
        if let Some(a) = addr {
            info.addr = ip_be(a.addr);
        }
        wan.link_ok = link.as_ref().is_some_and(|l| l.oper_up) && addr.is_some() && mac.is_some();
        if let Some(l) = &link
            && l.oper_up
            && addr.is_some()
            && resolved.is_none()
        {
            // An address removed and added again flushes the gateway's entry with its
            // "managed" flag: ask for it again, or nothing resolves the gateway.
            let _ = nl.add_managed_neighbour(l.ifindex, wan.gateway).await;
        }
        if info != wan.info {
            changed = true;
            wan.info = info;
        }
    }
    changed
}
