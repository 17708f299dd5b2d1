//! One controller per interface: a `flock`ed file per managed interface under /run/pcc,
//! named after the network namespace too (interface names repeat across namespaces).
use std::{
    fs::{self, File, OpenOptions},
    io::{Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};

const LOCK_DIR: &str = "/run/pcc";

/// Held while the controller runs; the kernel releases the lock if the process dies.
pub struct InterfaceLocks {
    held: Vec<(PathBuf, File)>,
}

impl InterfaceLocks {
    pub fn acquire(interfaces: &[String]) -> Result<Self> {
        fs::create_dir_all(LOCK_DIR).with_context(|| format!("cannot create {LOCK_DIR}"))?;
        let netns = fs::metadata("/proc/self/ns/net")
            .map(|m| m.ino())
            .unwrap_or(0);
        let mut locks = Self { held: Vec::new() };
        for name in interfaces {
            let path = PathBuf::from(format!("{LOCK_DIR}/{name}.{netns}.lock"));
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: flock on an fd we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                bail!(
                    "interface {name} is already managed by another pcc-ctl (pid {})",
                    pid.trim()
                );
            }
            file.set_len(0)?;
            file.rewind()?;
            write!(file, "{}", std::process::id())?;
            locks.held.push((path, file));
        }
        Ok(locks)
    }
}

impl Drop for InterfaceLocks {
    fn drop(&mut self) {
        for (path, _file) in self.held.drain(..) {
            let _ = fs::remove_file(path);
        }
        // The directory stays: the pinned-state and offload records share it, it is a tmpfs
        // gone at reboot, and removing it when empty raced another controller (or a test
        // lab's `mkdir -p /run/pcc && mount --bind …`) creating it at that moment.
    }
}
