//! pcc's benchmarks and program test bed, kept out of the controller a router runs: the test
//! bed (`testbed`, shared by pcc-ctl's program tests and the program benchmark), the program
//! cost benchmark (`bench`) and the live-frames packet generator (`generate`). `main.rs` is the
//! `pcc-bench` command on top, which `cargo xtask bench` runs.
pub mod bench;
pub mod generate;
pub mod testbed;
