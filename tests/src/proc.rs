//! Child processes of the lab: own process group, killed with their parent, output captured,
//! every wait bounded in time.

use std::{
    collections::BTreeSet,
    io::Read,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Pids of lab processes that have not been reaped yet. An unreaped child keeps its pid (as a
/// zombie at worst), so killing a registered pid never hits an unrelated process.
pub(crate) type Registry = Arc<Mutex<BTreeSet<i32>>>;

/// A process started in a lab namespace. Dropping it kills its whole process group (SIGKILL)
/// and reaps it. It also dies when the thread that started it exits (`PR_SET_PDEATHSIG`), so
/// keep a `LabProcess` in the thread that created it.
pub struct LabProcess {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    registry: Registry,
}

impl LabProcess {
    /// Starts `cmd` in its own process group with stdout/stderr captured. `death_signal` is
    /// delivered to it if the starting thread dies first.
    pub(crate) fn spawn(
        mut cmd: Command,
        name: &str,
        registry: &Registry,
        death_signal: i32,
        stdin: Stdio,
    ) -> Result<Self> {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe calls (setpgid, prctl, getppid) run between fork and
        // exec. PR_SET_PDEATHSIG survives execve of a non-setuid binary.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    death_signal as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    // The parent died before prctl took effect.
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let pid = child.id() as i32;
        registry.lock().unwrap().insert(pid);
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(pump(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(pump(err, stderr.clone()));
        }
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            status: None,
            stdout,
            stderr,
            readers,
            registry: registry.clone(),
        })
    }

    /// Starts `cmd` on the host (not in a lab namespace) like a lab process: own process
    /// group, output captured, SIGKILLed with its group when dropped, `death_signal` if the
    /// starting thread dies first.
    pub fn spawn_host(cmd: Command, name: &str, death_signal: i32) -> Result<Self> {
        Self::spawn(cmd, name, &Registry::default(), death_signal, Stdio::null())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A short description (the command line) for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes the child's stdin (only if it was started with a piped stdin).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut().and_then(|c| c.stdin.take())
    }

    /// What it printed on stdout so far.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What it printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Exit status if it has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Some(child) = self.child.as_mut()
            && let Ok(Some(st)) = child.try_wait()
        {
            self.reaped(st);
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(1);
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(20));
        }
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_none() {
            // SAFETY: the pid is our unreaped child, so it cannot have been reused.
            unsafe { libc::kill(self.pid() as i32, sig) };
        }
    }

    /// SIGKILLs the whole process group and reaps the leader.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_none() {
            // SAFETY: the group leader is our unreaped child, so the pgid cannot be reused.
            unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
            if let Some(child) = self.child.as_mut()
                && let Ok(st) = child.wait()
            {
                self.reaped(st);
            }
        }
        self.status
    }

    /// Waits up to `timeout` (kills it after that), then returns everything it printed. A
    /// killed process has a status without exit code (`status.code() == None`).
    pub fn finish(mut self, timeout: Duration) -> Output {
        if self.wait_timeout(timeout).is_none() {
            self.kill();
        }
        self.join_readers(Duration::from_secs(2));
        let status = self.status.unwrap_or_else(|| ExitStatus::from_raw(9));
        Output {
            status,
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        }
    }

    fn join_readers(&mut self, grace: Duration) {
        // A grandchild that kept the pipe open must not hang us: wait a little, then leave the
        // reader thread behind (it ends when the pipe closes).
        let deadline = Instant::now() + grace;
        for r in std::mem::take(&mut self.readers) {
            while !r.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }

    fn reaped(&mut self, st: ExitStatus) {
        self.status = Some(st);
        if let Some(child) = self.child.as_ref() {
            self.registry.lock().unwrap().remove(&(child.id() as i32));
        }
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        // Kills the group while the leader is unreaped (its pid, so its pgid, cannot be reused).
        self.kill();
    }
}

fn pump(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    })
}

/// Kills (SIGKILL, whole group) every registered process that is still unreaped.
pub(crate) fn kill_registered(registry: &Registry) {
    for pid in registry.lock().unwrap().iter() {
        // SAFETY: registered pids are unreaped children of ours (see `Registry`).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
}

/// Runs `cmd` on the host (not in a lab namespace) and returns its stdout; an error with its
/// output unless it exits 0.
pub fn host_stdout(mut cmd: Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    anyhow::ensure!(out.status.success(), "{what}: {}", describe(&out));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Formats an `Output` for an error message.
pub fn describe(out: &Output) -> String {
    let status = match out.status.code() {
        Some(c) => format!("exit code {c}"),
        None => format!(
            "killed by signal {} (timed out?)",
            out.status.signal().unwrap_or(0)
        ),
    };
    format!(
        "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}
