#![no_std]
//! Nothing here: the programs are the binary targets, `pcc` (the dataplane, built by
//! `pcc-ctl/build.rs`) and `bench` (the benchmark programs, built by `pcc-bench/build.rs`).
