//! `pcc-ctl up`: learn the ports, load and attach the dataplane, keep it fed until a signal.
use std::{
    collections::HashSet,
    io::Write as _,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use pcc_common::{
    Config, LAN_DEVMAP_BASE, LanInfo, MAX_LANS, MAX_WANS, NatPortRange, WAN_FLAG_UP, WanInfo, slots,
};
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    cli::{UpArgs, XdpModeArg},
    conntrack::{self, GcReport},
    dataplane::{Dataplane, Role},
    lock::InterfaceLocks,
    maps::Maps,
    metrics::{self, Metrics},
    netlink::{Ipv4Net, Link, Netlink},
};

/// How often gateway MACs and link state are re-read.
const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired connections are collected.
const GC_INTERVAL: Duration = Duration::from_secs(2);
/// How long start-up waits for gateways to resolve before going on without them.
const ARP_WAIT: Duration = Duration::from_secs(3);

/// One WAN as the controller tracks it.
#[derive(Clone, Debug)]
pub struct WanView {
    pub name: String,
    pub wan_id: u8,
    pub weight: u32,
    pub gateway: Ipv4Addr,
    pub up: bool,
    pub info: WanInfo,
}

/// What the metrics endpoint and the background tasks share.
pub struct Shared {
    pub maps: Mutex<Maps>,
    pub metrics: Metrics,
    pub wans: Mutex<Vec<WanView>>,
    pub gc: Mutex<GcReport>,
}

fn ip_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

fn check_args(args: &UpArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "pcc-ctl up must run as root (it loads eBPF programs and attaches them to interfaces)"
        );
    }
    if args.wan.len() > MAX_WANS {
        bail!(
            "at most {MAX_WANS} WAN interfaces are supported, got {}",
            args.wan.len()
        );
    }
    if args.lan.len() > MAX_LANS {
        bail!(
            "at most {MAX_LANS} LAN interfaces are supported, got {}",
            args.lan.len()
        );
    }
    let mut seen = HashSet::new();
    for name in args.wan.iter().chain(&args.lan) {
        if !seen.insert(name) {
            if args.wan.contains(name) && args.lan.contains(name) {
                bail!("interface {name} is given as both WAN and LAN");
            }
            bail!("interface {name} is given twice");
        }
    }
    for (name, _) in &args.weight {
        if !args.wan.contains(name) {
            bail!(
                "--weight names {name}, which is not one of the WANs ({})",
                args.wan.join(",")
            );
        }
    }
    for (name, _) in &args.gateway {
        if !args.wan.contains(name) {
            bail!(
                "--gateway names {name}, which is not one of the WANs ({})",
                args.wan.join(",")
            );
        }
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

/// The router's own ephemeral source ports, which the NAT must not hand out.
fn local_port_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or((32768, 60999))
}

struct Learned {
    wans: Vec<(Link, Ipv4Net, Ipv4Addr)>,
    lans: Vec<(Link, Ipv4Net)>,
}

async fn learn(nl: &Netlink, args: &UpArgs) -> Result<Learned> {
    let mut wans = Vec::new();
    for name in &args.wan {
        let link = nl.link(name).await?;
        let net = nl
            .ipv4_addr(link.ifindex)
            .await?
            .with_context(|| format!("interface {name} has no IPv4 address"))?;
        let gateway = match args.gateway.iter().find(|(n, _)| n == name) {
            Some((_, g)) => *g,
            None => nl.default_gateway(link.ifindex).await?.with_context(|| {
                format!("WAN {name} has no gateway: no default route through it (give one with --gateway {name}=ADDR)")
            })?,
        };
        wans.push((link, net, gateway));
    }
    let mut lans = Vec::new();
    for name in &args.lan {
        let link = nl.link(name).await?;
        let net = nl
            .ipv4_addr(link.ifindex)
            .await?
            .with_context(|| format!("interface {name} has no IPv4 address"))?;
        lans.push((link, net));
    }
    Ok(Learned { wans, lans })
}

fn weights_of(wans: &[WanView]) -> [u32; MAX_WANS] {
    let mut w = [0; MAX_WANS];
    for wan in wans.iter().filter(|w| w.up) {
        w[wan.wan_id as usize] = wan.weight;
    }
    w
}

fn write_wans(maps: &mut Maps, wans: &[WanView]) -> Result<()> {
    for wan in wans {
        maps.wans
            .set(u32::from(wan.wan_id), wan.info, 0)
            .context("cannot write WANS")?;
    }
    maps.slots
        .set(0, slots::build(&weights_of(wans)), 0)
        .context("cannot write SLOTS")?;
    Ok(())
}

pub async fn run(args: UpArgs) -> Result<()> {
    check_args(&args)?;
    let all: Vec<String> = args.wan.iter().chain(&args.lan).cloned().collect();
    let _locks = InterfaceLocks::acquire(&all)?;
    ensure_bpffs()?;
    let nl = Netlink::connect()?;
    let learned = learn(&nl, &args).await?;

    let (mut dataplane, mut maps) = Dataplane::load(args.max_connections)?;
    let (skip_min, skip_max) = local_port_range();
    let nat_ports = NatPortRange {
        min: args.nat_ports.0,
        max: args.nat_ports.1,
        skip_min,
        skip_max,
    };
    if nat_ports.is_empty() {
        bail!(
            "NAT port range {}-{} lies inside the router's own ephemeral ports {skip_min}-{skip_max}",
            args.nat_ports.0,
            args.nat_ports.1
        );
    }
    let config = Config {
        classifier: args.classifier as u8,
        lan_count: learned.lans.len() as u8,
        _pad: [0; 2],
        hash_seed: args.hash_seed,
        nat_ports,
    };
    maps.config
        .set(0, config, 0)
        .context("cannot write CONFIG")?;
    for (lan_id, (link, net)) in learned.lans.iter().enumerate() {
        let info = LanInfo {
            ifindex: link.ifindex,
            addr: ip_be(net.addr),
            netmask: ip_be(net.netmask()),
            mac: link.mac,
            mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
        };
        maps.lans
            .set(lan_id as u32, info, 0)
            .context("cannot write LANS")?;
        maps.devmap
            .set(LAN_DEVMAP_BASE + lan_id as u32, link.ifindex, None, 0)
            .context("cannot write DEVMAP")?;
    }
    let mut wans = Vec::new();
    for (wan_id, (link, net, gateway)) in learned.wans.iter().enumerate() {
        maps.devmap
            .set(wan_id as u32, link.ifindex, None, 0)
            .context("cannot write DEVMAP")?;
        let weight = args
            .weight
            .iter()
            .find(|(n, _)| *n == link.name)
            .map_or(1, |(_, w)| *w);
        let info = WanInfo {
            ifindex: link.ifindex,
            addr: ip_be(net.addr),
            mac: link.mac,
            gateway_mac: [0; 6],
            mtu: link.mtu.min(u32::from(u16::MAX)) as u16,
            flags: 0,
        };
        wans.push(WanView {
            name: link.name.clone(),
            wan_id: wan_id as u8,
            weight,
            gateway: *gateway,
            up: false,
            info,
        });
    }

    // From here on the kernel holds state of ours: clean it up on every exit path.
    let mut managed = Vec::new();
    let result = async {
        for wan in &wans {
            nl.add_managed_neighbour(wan.info.ifindex, wan.gateway).await?;
            managed.push((wan.info.ifindex, wan.gateway));
        }
        let deadline = tokio::time::Instant::now() + ARP_WAIT;
        loop {
            refresh_wans(&nl, &mut wans, false).await;
            if wans.iter().all(|w| w.up) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for wan in wans.iter().filter(|w| !w.up) {
            log::warn!("WAN {} is not usable yet (gateway {} unresolved or link down); it joins when it is", wan.name, wan.gateway);
        }
        write_wans(&mut maps, &wans)?;
        if args.xdp_mode == XdpModeArg::Generic {
            log::warn!("generic XDP mode: every packet pays for an skb first; use native mode where the driver has it");
        }
        for (link, _) in &learned.lans {
            dataplane.attach(Role::Lan, &link.name, args.xdp_mode)?;
        }
        for (link, _, _) in &learned.wans {
            dataplane.attach(Role::Wan, &link.name, args.xdp_mode)?;
        }
        let shared = Arc::new(Shared {
            maps: Mutex::new(maps),
            metrics: Metrics::new(args.classifier.name())?,
            wans: Mutex::new(wans.clone()),
            gc: Mutex::new(GcReport::default()),
        });
        let server = metrics::bind(args.metrics, shared.clone()).await?;
        tokio::spawn(server);
        log::info!(
            "balancing {} over {} ({} classifier), metrics on http://{}/metrics",
            args.lan.join(","),
            args.wan.join(","),
            args.classifier.name(),
            args.metrics
        );
        println!("pcc-ctl: ready");
        let _ = std::io::stdout().flush();
        serve(&nl, &shared, wans, &args).await
    }
    .await;

    drop(dataplane);
    for (ifindex, gateway) in managed {
        if let Err(e) = nl.del_neighbour(ifindex, gateway).await {
            log::warn!("{e:#}");
        }
    }
    result
}

/// Runs until SIGINT or SIGTERM: keeps WAN state and gateway MACs fresh, collects garbage.
async fn serve(nl: &Netlink, shared: &Shared, mut wans: Vec<WanView>, args: &UpArgs) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut refresh = tokio::time::interval(REFRESH_INTERVAL);
    let mut gc = tokio::time::interval(GC_INTERVAL);
    let timeouts = args.timeouts.timeouts();
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = refresh.tick() => {
                if refresh_wans(nl, &mut wans, true).await {
                    write_wans(&mut shared.maps.lock().expect("maps lock poisoned"), &wans)?;
                    *shared.wans.lock().expect("wans lock poisoned") = wans.clone();
                }
            }
            _ = gc.tick() => {
                let report = conntrack::collect(&mut shared.maps.lock().expect("maps lock poisoned"), &timeouts, conntrack::monotonic_ns())?;
                *shared.gc.lock().expect("gc lock poisoned") = report;
            }
        }
    }
    log::info!(
        "stopping: detaching from {}",
        args.wan
            .iter()
            .chain(&args.lan)
            .cloned()
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(())
}

/// Re-reads link state and gateway MACs; returns whether anything the dataplane sees changed.
/// `announce` logs state changes (not during start-up, where an error must stay one line).
async fn refresh_wans(nl: &Netlink, wans: &mut [WanView], announce: bool) -> bool {
    let mut changed = false;
    for wan in wans.iter_mut() {
        let link = nl.link(&wan.name).await.ok();
        let mac = match &link {
            Some(l) => nl
                .neighbour_mac(l.ifindex, wan.gateway)
                .await
                .ok()
                .flatten(),
            None => None,
        };
        let oper_up = link.as_ref().is_some_and(|l| l.oper_up);
        let mut info = wan.info;
        info.gateway_mac = mac.unwrap_or([0; 6]);
        let up = oper_up && mac.is_some();
        info.flags = if up { WAN_FLAG_UP } else { 0 };
        if let Some(l) = &link {
            info.mac = l.mac;
            info.mtu = l.mtu.min(u32::from(u16::MAX)) as u16;
        }
        if up != wan.up && announce {
            log::info!("WAN {} is {}", wan.name, if up { "up" } else { "down" });
        }
        if info != wan.info || up != wan.up {
            changed = true;
            wan.info = info;
            wan.up = up;
        }
    }
    changed
}
