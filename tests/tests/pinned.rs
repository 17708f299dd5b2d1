//! One long TCP connection (a 6 MB download paced by the server at 2 MB/s, ~3 s) stays on one WAN: every one of
//! its packets crosses the same ISP, whatever the classifier or method.

use pcc_tests::{Lab, require_root};

const COUNTERS: &str = "table inet pcctest {
  counter down {}
  counter up {}
  chain c_fwd {
    type filter hook forward priority 0; policy accept;
    tcp sport 80 counter name down
    tcp dport 80 counter name up
  }
}
";

fn run(args: &[&str]) {
    let what = args.join(" ");
    let lab = Lab::builder().build().expect("building the lab");
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(6 << 20).expect("6 MB test file");
    for isp in ["isp0", "isp1"] {
        lab.nft(isp, COUNTERS).expect("nft counters in the ISP");
    }
    let _pcc = lab.start_pcc(args).expect("starting pcc-ctl");
    let dl = lab
        .download_paced("c1", lab.server_addr(3), &file, 2_000_000)
        .expect("slow download through pcc");
    assert_eq!(dl.sha256, file.sha256, "sha256 of the slow download");
    assert!(dl.seconds >= 2.0, "download took only {:.2} s", dl.seconds);
    let c: Vec<((u64, u64), (u64, u64))> = ["isp0", "isp1"]
        .iter()
        .map(|isp| {
            (
                lab.nft_counter(isp, "inet", "pcctest", "down")
                    .expect("counter"),
                lab.nft_counter(isp, "inet", "pcctest", "up")
                    .expect("counter"),
            )
        })
        .collect();
    eprintln!("{what}: isp0 down/up {:?}, isp1 down/up {:?}", c[0], c[1]);
    let used: Vec<usize> = (0..2).filter(|&i| c[i].0.0 + c[i].1.0 > 0).collect();
    assert_eq!(
        used.len(),
        1,
        "the connection's packets crossed {} ISPs (isp0 down/up {:?}, isp1 down/up {:?})",
        used.len(),
        c[0],
        c[1]
    );
    let (down, up) = c[used[0]];
    assert!(
        down.1 >= file.size,
        "isp{} carried {} download bytes < file size",
        used[0],
        down.1
    );
    assert!(
        up.0 > 10,
        "isp{} carried only {} upload packets",
        used[0],
        up.0
    );
}

#[test]
fn long_connection_stays_on_one_wan() {
    require_root!();
    run(&["--classifier", "both-addresses"]);
}

#[test]
fn long_connection_stays_on_one_wan_port_classifier() {
    require_root!();
    run(&["--classifier", "both-addresses-and-ports"]);
}

/// `nth` hands every new connection to the next WAN; a connection still stays where it began.
#[test]
fn long_connection_stays_on_one_wan_with_nth() {
    require_root!();
    run(&["--method", "nth"]);
}

#[test]
fn long_connection_stays_on_one_wan_with_ecmp() {
    require_root!();
    run(&["--method", "ecmp"]);
}

/// `least-loaded` moves new connections away from a busy line; the busy connection itself
/// stays where it is.
#[test]
fn long_connection_stays_on_one_wan_with_least_loaded() {
    require_root!();
    run(&["--method", "least-loaded", "--line-rate", "wan0=20,wan1=20"]);
}
