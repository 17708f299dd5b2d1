//! The lab itself, without pcc-ctl: the kernel forwards and masquerades in the router (c2 is
//! policy-routed over wan1), which proves the topology, the services and the probes work.

use std::net::Ipv4Addr;

use pcc_tests::{Lab, lab_leftovers, require_root};

fn kernel_nat_lab() -> Lab {
    let lab = Lab::with(3, 5);
    lab.enable_kernel_nat().expect("kernel NAT in the router");
    // c2 leaves over wan1, the others over wan0 (the lower-metric default route).
    lab.ip_batch(
        "router",
        &[
            "route add default via 198.18.2.1 dev wan1 table 102".into(),
            format!("rule add from {} table 102", lab.client_addr(2)),
        ],
    )
    .expect("policy route for c2");
    lab
}

#[test]
fn kernel_forwarding_lab_works() {
    require_root!();
    let lab = kernel_nat_lab();
    lab.start_http().expect("HTTP server");
    lab.start_udp_echo().expect("UDP echo server");
    let file = lab.http_file(2 << 20).expect("test file");

    for (i, client) in lab.client_names().iter().enumerate() {
        let server = lab.server_addr(i);
        let dl = lab.download(client, server, &file, &[]).expect("download");
        assert_eq!(
            dl.sha256, file.sha256,
            "{client}: sha256 of the 2 MB download"
        );
        assert_eq!(dl.bytes, file.size, "{client}: size of the download");
    }
    let log = lab.http_log().expect("http log");
    assert_eq!(log.len(), 3, "server log: {log:?}");
    let seen = |srv: Ipv4Addr| log.iter().find(|e| e.server == srv).map(|e| e.client);
    assert_eq!(
        seen(lab.server_addr(0)),
        Some(lab.wan_addr(0)),
        "c1 should come from wan0"
    );
    assert_eq!(
        seen(lab.server_addr(1)),
        Some(lab.wan_addr(1)),
        "c2 should come from wan1"
    );
    assert_eq!(
        seen(lab.server_addr(2)),
        Some(lab.wan_addr(0)),
        "c3 should come from wan0"
    );

    let r = lab
        .udp_probe("c2", lab.server_addr(4), 7, 5000, 3)
        .expect("UDP echo from c2");
    assert_eq!(
        r.seen_addr(),
        Some(lab.wan_addr(1)),
        "c2's datagram source: {r:?}"
    );
    assert_eq!(
        r.from,
        format!("{}:7", lab.server_addr(4)),
        "reply source: {r:?}"
    );
    let r = lab
        .udp_probe("c3", lab.server_addr(4), 7, 0, 3)
        .expect("UDP echo from c3");
    assert_eq!(
        r.seen_addr(),
        Some(lab.wan_addr(0)),
        "c3's datagram source: {r:?}"
    );
    let udp = lab.udp_log().expect("udp log");
    assert!(udp.len() >= 2, "udp log: {udp:?}");

    let got = lab.ping("c1", lab.server_addr(3), 5).expect("ping");
    assert!(got >= 4, "ping c1 -> server: {got}/5 replies");
}

#[test]
fn topology_settings() {
    require_root!();
    let lab = Lab::with(2, 3);
    let routes = lab
        .run("router", &["ip", "route", "show", "default"])
        .unwrap();
    assert!(
        routes.contains("default via 198.18.1.1 dev wan0 metric 100")
            && routes.contains("default via 198.18.2.1 dev wan1 metric 200"),
        "router default routes:\n{routes}"
    );
    let fwd = lab
        .run("router", &["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(fwd.trim(), "0", "router forwards by default");
    for (node, dev) in [
        ("switch", "p-lan"),
        ("isp0", "up0"),
        ("isp1", "core0"),
        ("c2", "eth0"),
    ] {
        let k = lab.run(node, &["ethtool", "-k", dev]).unwrap();
        assert!(
            k.contains("tx-checksumming: off"),
            "{node}/{dev}: tx offload still on:\n{k}"
        );
        assert!(
            k.contains("generic-receive-offload: on"),
            "{node}/{dev}: GRO off:\n{k}"
        );
    }
    let ports = lab
        .run("switch", &["ip", "-o", "link", "show", "master", "br0"])
        .unwrap();
    assert_eq!(ports.lines().count(), 3, "bridge ports:\n{ports}");
}

#[test]
fn kernel_forwarding_spread_and_iperf() {
    require_root!();
    let lab = kernel_nat_lab();
    let spread = pcc_tests::scenario::connection_spread(&lab, None).expect("connection spread");
    // c2's 5 connections over wan1, c1's and c3's over wan0.
    assert_eq!(spread.per_wan, [10, 5], "{}", spread.summary());
    lab.start_iperf().expect("iperf3 server");
    let out = lab
        .run(
            "c1",
            &[
                "iperf3",
                "-c",
                &lab.server_addr(0).to_string(),
                "-t",
                "1",
                "-J",
            ],
        )
        .expect("iperf3 client");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(bps > 1e6, "iperf3 through the kernel router: {bps} bit/s");
}

#[test]
fn shaped_lab_is_limited() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(2)
        .shaped(Some(20))
        .build()
        .expect("lab");
    lab.enable_kernel_nat().expect("kernel NAT");
    lab.start_iperf().expect("iperf3 server");
    let out = lab
        .run(
            "c1",
            &[
                "iperf3",
                "-c",
                &lab.server_addr(0).to_string(),
                "-t",
                "2",
                "-R",
                "-J",
            ],
        )
        .expect("iperf3 -R");
    let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    assert!(
        (5e6..=24e6).contains(&bps),
        "download over one 20 Mbit/s line: {:.1} Mbit/s",
        bps / 1e6
    );
}

#[test]
fn lab_cleans_up() {
    require_root!();
    let prefix = {
        let lab = Lab::builder().clients(2).servers(1).build().expect("lab");
        let _p = lab.spawn("inet", &["sleep", "30"]).expect("spawn");
        assert!(lab.dir().exists());
        let prefix = lab.prefix().to_owned();
        assert!(lab_leftovers(&prefix).len() > 7, "namespaces, marker, dir");
        prefix
    };
    let left = lab_leftovers(&prefix);
    assert!(left.is_empty(), "{prefix} left behind: {left:?}");
}

/// pcc-ctl runs with the lab's own bpffs on /sys/fs/bpf and a lab directory on /run/pcc.
#[test]
fn pcc_command_sees_private_bpffs_and_run_dir() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(1)
        .pcc_ctl("/bin/sh")
        .build()
        .expect("lab");
    let mut cmd = lab
        .pcc_command(&[
            "-c",
            "stat -f -c %T /sys/fs/bpf && touch /run/pcc/probe && ip -o link show wan0",
        ])
        .unwrap();
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", pcc_tests::proc::describe(&out));
    assert!(
        text.starts_with("bpf_fs"),
        "/sys/fs/bpf is not a bpffs: {text}"
    );
    assert!(text.contains("wan0"), "not in the router namespace: {text}");
    assert!(
        lab.dir().join("run-pcc/probe").exists(),
        "/run/pcc is not the lab's"
    );
    assert!(
        !std::path::Path::new("/run/pcc/probe").exists(),
        "wrote to the host's /run/pcc"
    );
}

/// The BCP 38 ISPs and the optional parts, with the kernel routing and masquerading in the
/// router: a LAN source is refused and counted, NATed traffic passes, the branch sees the
/// client's own address, the modem answers (and isp0 hairpins nothing), tracepath finds the
/// 1492/1400 path and a 2 MB upload through it arrives intact.
#[test]
fn world_options_work_with_the_kernel_router() {
    require_root!();
    let lab = Lab::builder()
        .clients(1)
        .servers(2)
        .wan_mtu(Some(1492))
        .core_mtu(Some(1400))
        .branch(true)
        .modem_ui(true)
        .build()
        .expect("lab");
    // Forwarding without NAT first: c1's own address reaches isp0, which refuses it.
    lab.run("router", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        .unwrap();
    assert_eq!(lab.ping("c1", lab.server_addr(0), 2).unwrap(), 0);
    let (lan, _) = lab.lan_source_packets(0).unwrap();
    assert!(lan >= 2, "isp0 counted {lan} LAN-source packets");
    assert!(lab.refused_sources(0).unwrap() >= 2, "isp0 refused them");
    lab.enable_kernel_nat().expect("kernel NAT");
    assert_eq!(
        lab.ping("c1", lab.server_addr(0), 2).unwrap(),
        2,
        "NATed ping"
    );

    lab.start_http().unwrap();
    lab.start_http_on("branch").unwrap();
    lab.start_http_on("modem0").unwrap();
    let small = lab.http_file(1000).unwrap();
    lab.download("c1", pcc_tests::BRANCH_HOST, &small, &[])
        .expect("the branch");
    let b = lab.http_log_of("branch").unwrap();
    assert_eq!(b[0].client, lab.client_addr(1), "the branch sees c1: {b:?}");
    lab.download("c1", pcc_tests::MODEM_ADDR, &small, &[])
        .expect("the modem");
    let m = lab.http_log_of("modem0").unwrap();
    assert_eq!(m[0].client, lab.wan_addr(0), "the modem sees wan0: {m:?}");
    assert_eq!(lab.isp_hairpin_packets().unwrap(), 0, "isp0 hairpinned");

    let out = lab
        .run(
            "c1",
            &[
                "tracepath",
                "-n",
                "-m",
                "5",
                &lab.server_addr(1).to_string(),
            ],
        )
        .unwrap();
    assert!(out.contains("pmtu 1400"), "tracepath:\n{out}");
    let big = lab.http_file(2 << 20).unwrap();
    let up = lab
        .upload("c1", lab.server_addr(0), &big, &[])
        .expect("upload");
    assert_eq!(
        up.sha256, big.sha256,
        "2 MB upload through the 1492/1400 path"
    );
}
