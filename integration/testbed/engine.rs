//! Start `mpolice mbox|victim` as a real process inside a testbed namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Host, KernelQueue, MBOX_V4, MBOX_V6, Testbed, VICTIM_V4, VICTIM_V6};
use crate::driver::control;
use crate::stats::EngineStats;

/// How long an engine may take to bind its queues and install its rules.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an engine may take to clean up after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a role's config a test chooses; the rest is the testbed's.
#[derive(Debug, Clone)]
pub struct RoleConfig {
    /// First queue number and number of queues (one worker each).
    pub first_queue: u16,
    pub queues: u16,
    pub tcp_ports: Vec<u16>,
    pub udp_ports: Vec<u16>,
    /// More `[queue]` lines, verbatim (e.g. `fail_open = true`).
    pub queue_extra: String,
    /// The `[capabilities]` lines, verbatim; None leaves capabilities off.
    pub capabilities: Option<String>,
    /// mbox: clients address the mbox (198.18.1.1, 2001:2:0:1::1), which redirects.
    pub redirect: bool,
    /// Tunnel mode: the mbox (198.18.2.1, 2001:2:0:2::1) sends IP-in-UDP to port 6081,
    /// sealed with the key file both ends share (see [`RoleConfig::with_tunnel`]).
    pub tunnel: Option<PathBuf>,
    /// Trace every packet's stages to this file, and the packets to the pcaps beside it.
    pub trace: Option<PathBuf>,
    /// More sections, verbatim, at the end (e.g. `[ports]`).
    pub extra: String,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            first_queue: 0,
            queues: 1,
            tcp_ports: vec![8080, 5201],
            udp_ports: vec![9000],
            queue_extra: String::new(),
            capabilities: None,
            redirect: false,
            tunnel: None,
            trace: None,
            extra: String::new(),
        }
    }
}

impl RoleConfig {
    /// Turn MiddlePolice capabilities on, as `role` needs them in this testbed: the mbox
    /// gets a fresh key file, the victim accepts protected traffic only from the mbox link.
    pub fn with_capabilities(mut self, tb: &Testbed, role: &str) -> Result<Self> {
        let lines = match role {
            "mbox" => {
                let keys = tb.workdir().join("mbox.keys");
                write_key_file(&keys, 1)?;
                format!("key_file = \"{}\"\nmbox_id = 1\n", keys.display())
            }
            _ => format!(
                "mbox_interfaces = [\"{}\"]\nclient_prefixes = [\"198.18.1.0/24\", \"2001:2:0:1::/64\"]\n",
                tb.link("v0")
            ),
        };
        self.capabilities = Some(lines);
        Ok(self)
    }

    /// Turn tunnel mode on, with the testbed's tunnel key file (written once, for both).
    pub fn with_tunnel(mut self, tb: &Testbed) -> Result<Self> {
        let keys = tb.workdir().join("tunnel.keys");
        if !keys.exists() {
            write_key_file(&keys, 7)?;
        }
        self.tunnel = Some(keys);
        Ok(self)
    }

    /// Render the TOML an operator would write for this testbed.
    pub fn toml(&self, socket: &Path) -> String {
        let list = |p: &[u16]| p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
        let mut caps = self
            .capabilities
            .as_ref()
            .map(|c| format!("\n[capabilities]\n{c}"))
            .unwrap_or_default();
        if let Some(keys) = &self.tunnel {
            // One section serves both roles: the mbox reads `source`, the victim `mboxes`.
            let key = if self
                .capabilities
                .as_deref()
                .is_some_and(|c| c.contains("key_file"))
            {
                "source"
            } else {
                "mboxes"
            };
            caps.push_str(&format!(
                "\n[tunnel]\nport = 6081\nkey_file = \"{}\"\n{key} = [\"198.18.2.1\", \"2001:2:0:2::1\"]\n",
                keys.display()
            ));
        }
        if let Some(file) = &self.trace {
            caps.push_str(&format!(
                "\n[trace]\nfile = \"{}\"\npcap = true\nkernel = true\n",
                file.display()
            ));
        }
        if self.redirect {
            caps.push_str(&format!(
                "\n[redirect]\nmap = [{{ listen = \"{MBOX_V4}\", to = \"{VICTIM_V4}\" }}, \
                 {{ listen = \"{MBOX_V6}\", to = \"{VICTIM_V6}\" }}]\n"
            ));
        }
        format!(
            "[queue]\nfirst = {}\ncount = {}\n{}\n\n[protect]\naddresses = [\"{VICTIM_V4}\", \"{VICTIM_V6}\"]\n\
             tcp_ports = [{}]\nudp_ports = [{}]\n\n[control]\nsocket = \"{}\"\n{caps}\n{}",
            self.first_queue,
            self.queues,
            self.queue_extra,
            list(&self.tcp_ports),
            list(&self.udp_ports),
            socket.display(),
            self.extra
        )
    }
}

/// Write a fresh key file of one key with id `id`, mode 600.
fn write_key_file(path: &Path, id: u8) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, crate::capability::generate_key_line(id)? + "\n")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A running engine process; dropping it stops it (SIGTERM, then SIGKILL).
pub struct EngineProcess {
    role: &'static str,
    child: Option<Child>,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl EngineProcess {
    /// Start `bin ROLE --config …` in the host's namespace and wait until it serves stats.
    pub fn start(
        tb: &Testbed,
        host: Host,
        role: &'static str,
        bin: &Path,
        cfg: &RoleConfig,
    ) -> Result<Self> {
        let dir = tb.workdir();
        let socket = dir.join(format!("{role}.sock"));
        let config = dir.join(format!("{role}.toml"));
        let log = dir.join(format!("{role}.log"));
        std::fs::write(&config, cfg.toml(&socket))?;
        let bin = bin.to_str().context("engine path is not UTF-8")?;
        let conf = config.to_str().context("config path is not UTF-8")?;
        let out = File::create(&log)?;
        let child = tb
            .command(host, &[bin, role, "--config", conf])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start mpolice {role}"))?;
        let mut engine = EngineProcess {
            role,
            child: Some(child),
            socket,
            config,
            log,
        };
        engine.wait_ready()?;
        Ok(engine)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if control::query(&self.socket, false).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "mpolice {} exited at start ({status}): {}",
                    self.role,
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("mpolice {} did not come up: {}", self.role, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The engine's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The engine's control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Write `cfg` over the engine's config file (for a reload to read).
    pub fn rewrite_config(&self, cfg: &RoleConfig) -> Result<()> {
        Ok(std::fs::write(&self.config, cfg.toml(&self.socket))?)
    }

    /// Write `text` over the engine's config file as it is.
    pub fn write_config_text(&self, text: &str) -> Result<()> {
        Ok(std::fs::write(&self.config, text)?)
    }

    /// The engine's stats with the police's per-sender table.
    pub fn senders(&self) -> Result<EngineStats> {
        control::query(&self.socket, true)
    }

    /// Ask the engine for its counters through its control socket.
    pub fn stats(&self) -> Result<EngineStats> {
        control::query(&self.socket, false)
    }

    /// Read the engine's and the kernel's queue counters once they agree (or after 5 s):
    /// the engine publishes every 100 ms, so right after traffic stops it may lag.
    pub fn settled_stats(
        &self,
        tb: &Testbed,
        host: Host,
    ) -> Result<(EngineStats, Vec<KernelQueue>)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let kernel = tb.kernel_queues(host)?;
            let stats = self.stats()?;
            let queued: u64 = kernel.iter().map(|k| u64::from(k.last_id)).sum();
            // The precise queues (hybrid path) receive the segments of routed packets.
            let t = stats.total().engine;
            if queued == t.received + t.segments || Instant::now() > deadline {
                return Ok((stats, kernel));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the engine wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait for a clean exit; return its status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.stop_with(libc::SIGTERM)
    }

    /// Send `signal` and wait for the process to exit; return its status.
    pub fn stop_with(&mut self, signal: libc::c_int) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("mpolice {} already stopped", self.role);
        };
        let pid = i32::try_from(child.id()).context("pid")?;
        // SAFETY: kill has no memory-safety preconditions; pid is our own child.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "mpolice {} ignored signal {signal} for {STOP_TIMEOUT:?}",
                    self.role
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
    }
}
