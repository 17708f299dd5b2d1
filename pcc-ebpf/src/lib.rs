#![no_std]
//! Nothing here: the programs are the `pcc` binary target, built by `pcc-ctl/build.rs`.
