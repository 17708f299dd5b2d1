#!/usr/bin/env bash
# pcc set-up: installs what a fresh Debian 12 machine lacks to build and test pcc.
# Idempotent: every step checks first, so a second run takes a few seconds.
set -euo pipefail

log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (it installs Debian packages)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive

# Debian packages the build, the lab and the tests use.
PKGS=(
    llvm-22-dev libpolly-22-dev clang iproute2 ethtool curl iperf3 iputils-ping iputils-tracepath
    traceroute nftables coturn hping3
    bpftool netsniff-ng tcpdump python3-scapy prometheus socat procps psmisc kmod
    zlib1g-dev libzstd-dev
    g++ # libFuzzer (cargo-fuzz targets) is C++
)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    if ! apt-cache policy llvm-22-dev 2>/dev/null | grep -q Candidate: || \
       apt-cache policy llvm-22-dev 2>/dev/null | grep -q 'Candidate: (none)'; then
        apt-get update -qq
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    }
else
    log "Debian packages present"
fi

# coturn's package enables a host-wide STUN/TURN service; the lab runs its own turnserver in a
# namespace (tests/src/stun.rs) and wants none on the host.
if [ -d /run/systemd/system ] && systemctl is-enabled coturn >/dev/null 2>&1; then
    log "disabling the coturn service (the lab starts its own turnserver)"
    systemctl disable --now coturn >/dev/null 2>&1 || true
fi

# The eBPF crate is built with nightly and build-std. Installing "nightly" here would fetch
# today's, whose LLVM may not be the 22 that bpf-linker is built against: ask instead.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "setup: rustup has no 'nightly' toolchain; pcc needs the nightly whose LLVM is 22" \
        "(rustc 1.97.0-nightly 2026-05-19, as bpf-linker 0.13 is built against LLVM 22)" >&2
    exit 1
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
else
    log "nightly rust-src present"
fi
# `cargo xtask test` checks the formatting with nightly rustfmt (rustfmt.toml's import options
# are nightly-only) and runs clippy with the workspace's toolchain.
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rustfmt'; then
    log "adding rustfmt to nightly"
    rustup component add rustfmt --toolchain nightly
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    log "adding clippy"
    rustup component add clippy
fi

# bpf-linker linked against the same LLVM (22) as nightly's rustc.
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
    log "building bpf-linker 0.13 against LLVM 22 (about 2 minutes)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install --locked bpf-linker --version '^0.13' \
        --no-default-features --features llvm-22
else
    log "bpf-linker present"
fi

# cargo-fuzz for pcc-common's fuzz targets (run with nightly; the suite runs each briefly).
if ! command -v cargo-fuzz >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
    log "building cargo-fuzz 0.13 (about 3 minutes)"
    cargo install --locked cargo-fuzz --version '^0.13'
else
    log "cargo-fuzz present"
fi

# bpffs for pinned maps.
if ! mountpoint -q /sys/fs/bpf; then
    mount -t bpf bpf /sys/fs/bpf || log "warning: could not mount bpffs at /sys/fs/bpf"
fi
log "done"
