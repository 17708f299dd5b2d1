use which::which;

/// Rebuild the eBPF programs when bpf-linker changes (a new LLVM means new code).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap());
}
