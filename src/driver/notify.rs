//! systemd's service notifications (`sd_notify`, for `Type=notify` units): `READY=1`
//! once the rules and queues are live, `RELOADING=1` then `READY=1` around a reload,
//! `WATCHDOG=1` while the main loop runs (with `WatchdogSec=`), `STOPPING=1` when the
//! engine begins to stop. Off unless systemd set `$NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// The datagram socket to systemd, and the watchdog's interval.
pub struct Notifier {
    socket: UnixDatagram,
    to: SocketAddr,
    /// Send `WATCHDOG=1` this often (half systemd's timeout), if it asked for them.
    watchdog: Option<Duration>,
    last_ping: Option<Instant>,
}

impl Notifier {
    /// The notifier systemd asked for through the environment (None: not run by
    /// systemd as a notify service, or an address that is not a socket's).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_str()?;
        // `@name` is a socket in the abstract namespace.
        let to = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
            None => SocketAddr::from_pathname(path).ok()?,
        };
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Some(Notifier {
            socket: UnixDatagram::unbound().ok()?,
            to,
            watchdog,
            last_ping: None,
        })
    }

    /// Tell systemd `state` (lines of `KEY=value`); a failure is logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.to) {
            tracing::warn!("systemd notification {state:?}: {e}");
        }
    }

    /// The engine is about to reload its config.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Ping the watchdog if one is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        let Some(every) = self.watchdog else { return };
        if self
            .last_ping
            .is_none_or(|t| now.saturating_duration_since(t) >= every)
        {
            self.send("WATCHDOG=1");
            self.last_ping = Some(now);
        }
    }
}

/// How often to ping for `WATCHDOG_USEC` (half of it), if the variables are meant for
/// this process (`WATCHDOG_PID` unset or ours).
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, ours: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.parse() != Ok(ours)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// CLOCK_MONOTONIC in microseconds, as `RELOADING=1` carries it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_for_this_process_only() {
        assert_eq!(
            watchdog_interval(Some("10000000"), None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_interval(Some("10000000"), Some("7"), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(watchdog_interval(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn notifications_reach_the_socket_and_the_watchdog_is_paced() {
        let path = std::env::temp_dir().join(format!("mpolice-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        systemd
            .set_read_timeout(Some(Duration::from_secs(1)))
            .unwrap();
        let mut n = Notifier {
            socket: UnixDatagram::unbound().unwrap(),
            to: SocketAddr::from_pathname(&path).unwrap(),
            watchdog: Some(Duration::from_millis(500)),
            last_ping: None,
        };
        let recv = || {
            let mut buf = [0u8; 256];
            let len = systemd.recv(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..len]).into_owned()
        };
        n.send("READY=1");
        assert_eq!(recv(), "READY=1");
        let t = Instant::now();
        n.tick(t);
        n.tick(t + Duration::from_millis(100));
        n.tick(t + Duration::from_millis(500));
        assert_eq!((recv(), recv()), ("WATCHDOG=1".into(), "WATCHDOG=1".into()));
        n.reloading();
        assert!(recv().starts_with("RELOADING=1\nMONOTONIC_USEC="));
        std::fs::remove_file(&path).unwrap();
    }
}
