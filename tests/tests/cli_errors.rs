//! Bad invocations: one clear line on stderr, a non-zero exit, nothing left attached.

use std::time::Duration;

use pcc_tests::{Lab, require_root};

/// Runs `pcc-ctl args…`; it must fail fast with exactly one non-empty stderr line mentioning
/// `mention`, and leave nothing attached.
fn expect_refusal(lab: &Lab, args: &[&str], mention: &str) {
    let what = args.join(" ");
    let out = lab
        .run_pcc(args, Duration::from_secs(20))
        .expect("running pcc-ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let desc = pcc_tests::proc::describe(&out);
    if out.status.code().is_none() {
        panic!("`pcc-ctl {what}` kept running (killed after 20 s): {desc}");
    }
    expect_one_line(&out, mention);
    assert!(
        !stdout.contains("ready"),
        "`pcc-ctl {what}` said ready: {desc}"
    );
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "`pcc-ctl {what}` left something attached"
    );
}

/// `expect_refusal` for `pcc-ctl up --wan wan0,wan1 --lan lan0 extra…`.
fn expect_up_refusal(lab: &Lab, extra: &[&str], mention: &str) {
    let mut args = vec!["up", "--wan", "wan0,wan1", "--lan", "lan0"];
    args.extend_from_slice(extra);
    expect_refusal(lab, &args, mention);
}

#[test]
fn bad_interfaces_are_refused() {
    require_root!();
    let lab = Lab::with(1, 2);
    // wan2: up, no address. wan3: an address but no default route through it.
    lab.ip_batch(
        "router",
        &[
            "link add wan2 type veth peer name wan2p".into(),
            "link add wan3 type veth peer name wan3p".into(),
            "addr add 198.18.3.2/24 dev wan3".into(),
            "link set wan2 up".into(),
            "link set wan2p up".into(),
            "link set wan3 up".into(),
            "link set wan3p up".into(),
        ],
    )
    .expect("extra router interfaces");

    expect_refusal(
        &lab,
        &["up", "--wan", "nosuch0,wan1", "--lan", "lan0"],
        "nosuch0",
    );
    expect_up_refusal(&lab, &["--lan", "nosuch1"], "nosuch1");
    expect_refusal(&lab, &["up", "--wan", "wan0,wan1", "--lan", "wan1"], "wan1");
    expect_refusal(&lab, &["up", "--wan", "wan0,wan2", "--lan", "lan0"], "wan2");
    expect_refusal(&lab, &["up", "--wan", "wan0,wan3", "--lan", "lan0"], "wan3");
    let policies = lab.dir().join("bad-policy.toml");
    std::fs::write(
        &policies,
        "[[policy]]\nname = \"staff\"\nsubnets = [\"198.19.10.0/28\"]\nwans = [\"wan9\"]\n",
    )
    .unwrap();
    expect_up_refusal(
        &lab,
        &["--config", &policies.to_string_lossy()],
        "policy staff names wan9",
    );
    expect_up_refusal(
        &lab,
        &["--method", "least-loaded", "--line-rate", "wan0=20"],
        "missing: wan1",
    );
    expect_up_refusal(
        &lab,
        &["--probe", "wan0=198.18.1.1", "--probe", "wan0=198.18.1.9"],
        "--probe names wan0 twice",
    );
    expect_up_refusal(&lab, &["--probe", "wan7=198.18.1.1"], "wan7");

    // A driver without native XDP (a bridge): refused, with the way out named.
    lab.ip_batch(
        "router",
        &[
            "link add lan9 type bridge".into(),
            "addr add 198.19.20.1/24 dev lan9".into(),
            "link set lan9 up".into(),
        ],
    )
    .expect("bridge LAN");
    expect_refusal(
        &lab,
        &["up", "--wan", "wan0,wan1", "--lan", "lan9"],
        "native XDP",
    );

    // The way out works: generic mode only when asked for, with a warning, and it leaves
    // nothing behind either.
    let mut generic = lab
        .start_pcc(&["--lan", "lan9", "--xdp-mode", "generic"])
        .expect("pcc-ctl in generic XDP mode on the bridge");
    let (_, log) = generic.output();
    assert!(log.contains("generic XDP mode"), "no warning: {log}");
    let exit = generic.stop().expect("stopping pcc-ctl");
    assert_eq!(exit.code(), Some(0), "{}", exit.describe());
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "generic mode left something attached"
    );
}

/// Checks a failed run outside `expect_refusal`'s wrapper: non-zero, one line naming `mention`.
fn expect_one_line(out: &std::process::Output, mention: &str) {
    let desc = pcc_tests::proc::describe(out);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "should fail: {desc}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {desc}");
    assert!(
        lines[0].contains(mention),
        "the error should say {mention:?}: {:?}",
        lines[0]
    );
}

#[test]
fn not_root_and_no_bpffs_are_refused() {
    require_root!();
    let lab = Lab::with(1, 1);
    let bin = pcc_tests::pcc_ctl_path().expect("pcc-ctl binary");
    let bin = bin.to_str().expect("utf-8 path");
    let up = "up --wan wan0,wan1 --lan lan0 --metrics 127.0.0.1:9100";

    let out = lab
        .exec(
            "router",
            &[
                "sh",
                "-c",
                &format!("exec setpriv --reuid=65534 --regid=65534 --clear-groups {bin} {up}"),
            ],
        )
        .expect("running pcc-ctl as nobody");
    expect_one_line(&out, "root");

    // A read-only, empty /sys in this command's private mount namespace: no /sys/fs/bpf to
    // mount bpffs on.
    let out = lab
        .exec(
            "router",
            &[
                "sh",
                "-c",
                &format!("mount -t tmpfs -o ro tmpfs /sys && exec {bin} {up}"),
            ],
        )
        .expect("running pcc-ctl without bpffs");
    expect_one_line(&out, "bpffs");
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "left something attached"
    );
}

#[test]
fn second_instance_is_refused_and_first_keeps_working() {
    require_root!();
    let lab = Lab::with(1, 2);
    lab.start_http().expect("HTTP server");
    let file = lab.http_file(256 << 10).expect("test file");
    let mut first = lab.start_pcc(&[]).expect("starting the first pcc-ctl");

    let args = [
        "up",
        "--wan",
        "wan0,wan1",
        "--lan",
        "lan0",
        "--metrics",
        "127.0.0.1:9101",
    ];
    let out = lab
        .run_pcc(&args, Duration::from_secs(20))
        .expect("running a second pcc-ctl");
    let desc = pcc_tests::proc::describe(&out);
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "second `pcc-ctl up` on the same interfaces should fail: {desc}"
    );
    expect_one_line(&out, "already managed by another pcc-ctl");

    assert!(
        first.is_running(),
        "the first pcc-ctl died: {:?}",
        first.output()
    );
    first
        .metrics()
        .expect("the first pcc-ctl's metrics after the second attempt");
    let dl = lab
        .download("c1", lab.server_addr(1), &file, &[])
        .expect("download through the first pcc-ctl after the second attempt");
    assert_eq!(dl.sha256, file.sha256);
    let exit = first.stop().expect("stopping the first pcc-ctl");
    assert_eq!(exit.code(), Some(0), "first pcc-ctl: {}", exit.describe());
    assert_eq!(
        lab.leftover_attachments().unwrap(),
        None,
        "left attached after the first stopped"
    );
}
