//! `pcc-bench generate`: a packet generator for `cargo xtask bench forward`, built on the
//! benchmark object's `bench_gen` program and BPF_PROG_TEST_RUN's live-frames mode
//! (BPF_F_TEST_XDP_LIVE_FRAMES, Linux 5.18).
//!
//! The kernel runs `bench_gen` on page-pool frames initialised from one 64-byte UDP frame
//! (60 bytes + FCS); the program steps each frame to the next of `GEN_FLOWS` flows and
//! returns XDP_TX, which live-frames mode turns into a transmit out of the ingress device
//! given in the context. No socket, qdisc or skb is involved, so one core sends millions of
//! frames per second, far more than a router on the next core forwards.
use std::{
    ffi::CString,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader, TestRunAttrs, TestRunOptions,
    maps::{Array, MapData},
    programs::{ProgramError, TestRun as _, Xdp},
};
use pcc_common::{
    generator::{GEN_STATE_LEN, GEN_STATE_SENT, flow},
    packet::{Frame, L4},
};

use crate::{BENCH_PROGRAMS, xdp_program};

const USAGE: &str = "pcc-bench generate IFACE --count N --src-mac MAC --dst-mac MAC --src ADDR \
                     [--dport PORT] [--rate PPS] [--batch B] [--seconds S]";

/// Program runs per BPF_PROG_TEST_RUN call: about 10 s at the 6 M runs/s one core manages.
/// Calls are few and long because each call with more than one run adds the program to the
/// kernel's XDP dispatcher and removes it again, and the RCU grace periods that takes (about
/// 25 ms here) are a gap in the traffic. The time bound and stop requests interrupt a call
/// with a signal (the kernel checks for one between runs); the count is kept by the program.
const RUNS_PER_CALL: u64 = 1 << 26;
/// Frames live-frames mode allows per batch (TEST_XDP_MAX_BATCH in net/bpf/test_run.c).
const MAX_BATCH: u32 = 256;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

#[derive(Debug)]
pub struct GenerateOpts {
    pub iface: String,
    pub count: u64,
    /// Packets/s; `None`: as fast as the CPU goes.
    pub rate: Option<u64>,
    /// Frames the kernel transmits per flush (live-frames batch size).
    pub batch: u32,
    /// Upper bound of the run's length.
    pub max_time: Duration,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dport: u16,
}

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    ensure!(
        parts.len() == 6,
        "{s} is not a MAC address (aa:bb:cc:dd:ee:ff)"
    );
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).with_context(|| format!("{s} is not a MAC address"))?;
    }
    Ok(mac)
}

impl GenerateOpts {
    pub fn parse(args: &[&str]) -> Result<Self> {
        let [iface, rest @ ..] = args else {
            bail!("usage: {USAGE}");
        };
        let mut count = None;
        let (mut rate, mut batch, mut seconds, mut dport) = (None, 64u32, 60.0f64, 9u16);
        let (mut src_mac, mut dst_mac, mut src) = (None, None, None);
        let mut it = rest.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .copied()
                    .with_context(|| format!("{arg} takes a value"))
            };
            match *arg {
                "--count" => count = Some(value()?.parse().context("--count")?),
                "--rate" => rate = Some(value()?.parse().context("--rate")?),
                "--batch" => batch = value()?.parse().context("--batch")?,
                "--seconds" => seconds = value()?.parse().context("--seconds")?,
                "--dport" => dport = value()?.parse().context("--dport")?,
                "--src-mac" => src_mac = Some(parse_mac(value()?)?),
                "--dst-mac" => dst_mac = Some(parse_mac(value()?)?),
                "--src" => src = Some(value()?.parse().context("--src")?),
                other => bail!("unknown option {other}: {USAGE}"),
            }
        }
        let count: u64 = count.with_context(|| format!("--count is required: {USAGE}"))?;
        ensure!(count > 0, "--count must be at least 1");
        ensure!(
            (1..=MAX_BATCH).contains(&batch),
            "--batch must be 1..={MAX_BATCH}"
        );
        ensure!(
            seconds > 0.0 && seconds <= 3600.0,
            "--seconds must be in (0, 3600]"
        );
        ensure!(rate != Some(0), "--rate must be at least 1");
        Ok(Self {
            iface: iface.to_string(),
            count,
            rate,
            batch,
            max_time: Duration::from_secs_f64(seconds),
            src_mac: src_mac.context("--src-mac is required")?,
            dst_mac: dst_mac.context("--dst-mac is required")?,
            src: src.context("--src is required")?,
            dport,
        })
    }

    /// The frame every page-pool frame starts as: flow 0, 18 bytes of payload to make 60
    /// bytes (64 on the wire with the FCS), UDP checksum 0 as `bench_gen` keeps it.
    pub fn frame(&self) -> Vec<u8> {
        let (dst, sport) = flow(0);
        Frame {
            dst_mac: self.dst_mac,
            src_mac: self.src_mac,
            src: self.src,
            dst: Ipv4Addr::from(dst),
            tos: 0,
            ttl: 64,
            id: 1,
            l4: L4::Udp {
                sport,
                dport: self.dport,
                payload: vec![0; 18],
                checksum: false,
            },
        }
        .bytes()
    }
}

/// What a generator run did.
#[derive(Debug, serde::Serialize)]
pub struct Generated {
    /// Frames the program returned XDP_TX for; the device may still have dropped some of
    /// them (a full veth ring: the veth's `xdp_xmit_errors`).
    pub sent: u64,
    pub seconds: f64,
    pub pps: f64,
    pub calls: u64,
    /// Stopped by SIGINT/SIGTERM or the time bound before `count` frames were sent.
    pub stopped_early: bool,
}

/// `bench_gen` loaded with a run's frame, rate and count.
pub struct Generator {
    ebpf: Ebpf,
    state: Array<MapData, [u64; GEN_STATE_LEN]>,
    frame: Vec<u8>,
    /// struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    /// egress_ifindex. The kernel takes the transmit device of XDP_TX from ingress_ifindex.
    ctx: [u8; 24],
}

impl Generator {
    pub fn load(opts: &GenerateOpts) -> Result<Self> {
        let name = CString::new(opts.iface.as_str())?;
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        ensure!(ifindex != 0, "no interface {}", opts.iface);
        // Pacing is done by the program (see bench_gen): a call per few frames would cost
        // more than the frames.
        let interval_ns: u64 = opts.rate.map_or(0, |r| (1_000_000_000 / r).max(1));
        let frame = opts.frame();
        let mut headers = [0u64; 5];
        for (w, b) in headers.iter_mut().zip(frame.chunks_exact(8)) {
            *w = u64::from_ne_bytes(b.try_into().expect("8 bytes"));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global("GEN_HEADERS", &headers, true)
            .override_global("GEN_INTERVAL_NS", &interval_ns, true)
            .override_global("GEN_COUNT", &opts.count, true)
            .load(BENCH_PROGRAMS)
            .context("loading the benchmark object")?;
        let state = Array::try_from(ebpf.take_map("GEN_STATE").context("no GEN_STATE map")?)?;
        let mut generator = Generator {
            ebpf,
            state,
            ctx: [0; 24],
            frame,
        };
        generator.ctx[4..8].copy_from_slice(&(generator.frame.len() as u32).to_ne_bytes());
        generator.ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        generator.program()?;
        Ok(generator)
    }

    /// `bench_gen`, loaded on first use (by [`load`](Self::load)).
    fn program(&mut self) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, "bench_gen")
    }

    /// Frames sent so far (the program returned XDP_TX).
    pub fn sent(&self) -> Result<u64> {
        Ok(self.state.get(&0, 0).context("reading GEN_STATE")?[GEN_STATE_SENT])
    }

    /// `runs` runs in live-frames mode, `batch` frames per transmit flush.
    fn run_live(&mut self, runs: u32, batch: u32) -> Result<(), ProgramError> {
        let (frame, ctx) = (self.frame.clone(), self.ctx);
        let Ok(prog) = self.program() else {
            return Err(ProgramError::NotLoaded);
        };
        let options = TestRunOptions {
            data_in: Some(&frame),
            ctx_in: Some(&ctx),
            repeat: runs,
            attrs: TestRunAttrs::new().xdp_live_frames(batch),
            ..TestRunOptions::default()
        };
        prog.test_run(options).map(|_| ())
    }

    /// One ordinary (not live) run on `frame`, as a page the kernel recycles holds it:
    /// the XDP action and the frame the program made of it.
    pub fn run_on(&mut self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let mut ctx = self.ctx;
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        let options = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        };
        let result = self
            .program()?
            .test_run(options)
            .context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }
}

/// Sends `opts.count` frames, or fewer when stopped (SIGINT, SIGTERM) or out of time.
pub fn generate(opts: &GenerateOpts) -> Result<Generated> {
    let mut generator = Generator::load(opts)?;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGALRM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, request_stop as *const () as libc::sighandler_t) };
    }
    // The time bound: SIGALRM interrupts the call running when it expires.
    let timer = libc::itimerval {
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
        it_value: libc::timeval {
            tv_sec: opts.max_time.as_secs() as libc::time_t,
            tv_usec: libc::suseconds_t::from(opts.max_time.subsec_micros()),
        },
    };
    // SAFETY: a valid itimerval; no old value wanted.
    let rc = unsafe { libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut()) };
    ensure!(rc == 0, "setitimer: {}", std::io::Error::last_os_error());
    let start = Instant::now();
    let (mut sent, mut calls, mut runs_total) = (0u64, 0u64, 0u64);
    while sent < opts.count && !STOP.load(Ordering::Relaxed) && start.elapsed() < opts.max_time {
        let runs = match opts.rate {
            // Every run sends: no run beyond the count.
            None => RUNS_PER_CALL.min(opts.count - sent),
            // Runs beyond the count drop their frames until the call ends: size the call to
            // what the remaining frames take at the run rate seen so far (and a margin).
            Some(rate) if runs_total > 0 => {
                let runs_per_sec = runs_total as f64 / start.elapsed().as_secs_f64();
                let secs = (opts.count - sent) as f64 / rate as f64;
                ((secs * runs_per_sec * 1.1) as u64 + 1000).min(RUNS_PER_CALL)
            }
            Some(_) => RUNS_PER_CALL,
        };
        let result = generator.run_live(runs as u32, opts.batch);
        calls += 1;
        runs_total += runs;
        sent = generator.sent()?;
        match result {
            Ok(()) => {}
            // A signal interrupts the call (EINTR): what it sent is in the count.
            Err(_) if STOP.load(Ordering::Relaxed) => break,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "BPF_PROG_TEST_RUN (live frames) of bench_gen on {}",
                        opts.iface
                    )
                });
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Generated {
        sent,
        seconds,
        pps: sent as f64 / seconds,
        calls,
        stopped_early: sent < opts.count,
    })
}

/// `pcc-bench generate ...`: runs the generator and prints one JSON line.
pub fn generate_cmd(args: &[&str]) -> Result<()> {
    let opts = GenerateOpts::parse(args)?;
    let done = generate(&opts)?;
    println!("{}", serde_json::to_string(&done)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use pcc_common::packet::parse;

    use super::*;

    fn parse_with(extra: &[&str]) -> Result<GenerateOpts> {
        let mut args = vec![
            "p-lan",
            "--src-mac",
            "02:00:00:00:00:11",
            "--dst-mac",
            "02:00:00:00:00:01",
            "--src",
            "198.19.10.11",
        ];
        args.extend_from_slice(extra);
        GenerateOpts::parse(&args)
    }

    #[test]
    fn frame_is_64_bytes_on_the_wire_and_valid() {
        let f = parse_with(&["--count", "10"]).unwrap().frame();
        assert_eq!(f.len(), 60);
        assert!(parse(&f).is_some());
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn bounds_are_required() {
        assert!(parse_with(&[]).is_err(), "no --count");
        assert!(parse_with(&["--count", "1", "--batch", "1000"]).is_err());
        assert!(parse_with(&["--count", "1", "--seconds", "0"]).is_err());
    }
}
