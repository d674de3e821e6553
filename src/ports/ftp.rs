//! The FTP variant of output groups (`ftp = true`): the bytes of a data connection
//! count against the group of the control port that set it up.
//!
//! The engine reads the control connection: in passive mode the server's reply names
//! the data port it listens on (`227 ... (h1,h2,h3,h4,p1,p2)`, `229 ... (|||port|)`);
//! in active mode the client's command names the port the server connects to
//! (`PORT h1,h2,h3,h4,p1,p2`, `EPRT |af|addr|port|`). Segments the server then sends
//! from that data port (passive), or to that client port (active), count against the
//! control port's group. Per worker: a client's control and data connections meet one
//! worker (queues balance by client). Bounded at [`MAX_DATA`] ports, each forgotten
//! after [`DATA_IDLE`] without a segment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Data ports followed per worker.
pub const MAX_DATA: usize = 4096;
/// A data port with no segment for this long is forgotten.
pub const DATA_IDLE: Duration = Duration::from_secs(600);

/// What the FTP variant counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FtpCounts {
    /// Data connections announced on a control connection.
    pub announced: u64,
    /// Passive data ports outside the protected ports: their segments never reach the
    /// engine, so they count against nothing.
    pub unprotected: u64,
    /// Announcements not followed: the table was full.
    pub untracked: u64,
}

impl std::ops::AddAssign for FtpCounts {
    fn add_assign(&mut self, o: FtpCounts) {
        self.announced += o.announced;
        self.unprotected += o.unprotected;
        self.untracked += o.untracked;
    }
}

/// Which end of the data connection a port is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum End {
    /// Passive: the server's port.
    Server,
    /// Active: the client's port.
    Client,
}

/// One worker's data connections, by client and port.
#[derive(Debug, Default)]
pub struct FtpData {
    /// (client, end, port) → (control port, last segment).
    ports: HashMap<(IpAddr, End, u16), (u16, Instant)>,
    counts: FtpCounts,
}

impl FtpData {
    /// A reply the server sent to `client` from control port `control`: a passive
    /// announcement starts following its data port. `protected`: whether the engine
    /// sees a port's segments.
    pub fn reply(
        &mut self,
        (client, control): (IpAddr, u16),
        payload: &[u8],
        protected: impl Fn(u16) -> bool,
        now: Instant,
    ) {
        let Some(port) = passive_port(payload) else {
            return;
        };
        if !protected(port) {
            self.counts.unprotected += 1;
            return;
        }
        self.follow((client, End::Server, port), control, now);
    }

    /// A command `client` sent to control port `control`: an active one starts
    /// following the client's data port.
    pub fn command(&mut self, (client, control): (IpAddr, u16), payload: &[u8], now: Instant) {
        if let Some(port) = active_port(payload) {
            self.follow((client, End::Client, port), control, now);
        }
    }

    /// The control port whose group a segment from server port `from` to `client` port
    /// `to` counts against, if it belongs to a data connection.
    pub fn control_of(
        &mut self,
        client: IpAddr,
        (from, to): (u16, u16),
        now: Instant,
    ) -> Option<u16> {
        let passive = (client, End::Server, from);
        let key = if self.ports.contains_key(&passive) {
            passive
        } else {
            (client, End::Client, to)
        };
        let entry = self.ports.get_mut(&key)?;
        entry.1 = now;
        Some(entry.0)
    }

    /// Forget the data ports idle for `DATA_IDLE`.
    pub fn expire(&mut self, now: Instant) {
        self.ports
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < DATA_IDLE);
    }

    pub fn counts(&self) -> FtpCounts {
        self.counts
    }

    fn follow(&mut self, key: (IpAddr, End, u16), control: u16, now: Instant) {
        if self.ports.len() >= MAX_DATA && !self.ports.contains_key(&key) {
            self.expire(now);
            if self.ports.len() >= MAX_DATA {
                self.counts.untracked += 1;
                return;
            }
        }
        self.counts.announced += 1;
        self.ports.insert(key, (control, now));
    }
}

/// The data port of a passive reply: `227 ... (h1,h2,h3,h4,p1,p2)` or
/// `229 ... (|||port|)`.
fn passive_port(reply: &[u8]) -> Option<u16> {
    let inside = |open: u8, close: u8| {
        let from = reply.iter().position(|&b| b == open)? + 1;
        let len = reply[from..].iter().position(|&b| b == close)?;
        std::str::from_utf8(&reply[from..from + len]).ok()
    };
    if reply.starts_with(b"227 ") {
        return port_of_six(inside(b'(', b')')?);
    }
    if reply.starts_with(b"229 ") {
        // The delimiter is the first character inside: `|||port|` (RFC 2428).
        let body = inside(b'(', b')')?;
        let d = body.chars().next()?;
        return body.split(d).nth(3)?.parse().ok();
    }
    None
}

/// The client's data port of an active command: `PORT h1,h2,h3,h4,p1,p2` or
/// `EPRT |af|addr|port|`.
fn active_port(command: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(command).ok()?.lines().next()?;
    let (verb, rest) = line.split_once(' ')?;
    match verb.to_ascii_uppercase().as_str() {
        "PORT" => port_of_six(rest.trim()),
        "EPRT" => {
            let rest = rest.trim();
            let d = rest.chars().next()?;
            rest.split(d).nth(3)?.parse().ok()
        }
        _ => None,
    }
}

/// The port of `h1,h2,h3,h4,p1,p2`: p1 * 256 + p2.
fn port_of_six(six: &str) -> Option<u16> {
    let n: Vec<u8> = six
        .split(',')
        .map(|s| s.trim().parse().ok())
        .collect::<Option<_>>()?;
    match n[..] {
        [_, _, _, _, hi, lo] => Some(u16::from_be_bytes([hi, lo])),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_and_active_announcements_name_their_port() {
        let at = |s: &str| passive_port(s.as_bytes());
        assert_eq!(
            at("227 Entering Passive Mode (198,18,2,2,117,48).\r\n"),
            Some(30000)
        );
        assert_eq!(
            at("229 Entering Extended Passive Mode (|||30001|)\r\n"),
            Some(30001)
        );
        assert_eq!(at("229 Extended (!!!30002!)\r\n"), Some(30002));
        for bad in [
            "226 Transfer complete (1,2,3,4,5,6)",
            "227 Entering Passive Mode (1,2,3,4,5)",
            "227 Entering Passive Mode (1,2,3,4,5,600)",
            "227 no parenthesis 1,2,3,4,5,6",
            "229 (|||x|)",
            "229 (",
            "",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        let cmd = |s: &str| active_port(s.as_bytes());
        assert_eq!(cmd("PORT 198,18,1,2,156,64\r\n"), Some(40000));
        assert_eq!(cmd("port 198,18,1,2,156,65\r\n"), Some(40001));
        assert_eq!(cmd("EPRT |2|2001:2:0:1::2|40002|\r\n"), Some(40002));
        assert_eq!(cmd("RETR f.bin\r\n"), None);
        assert_eq!(cmd("PORT 1,2,3\r\n"), None);
        assert_eq!(cmd("\u{ff}"), None);
    }

    #[test]
    fn data_segments_count_against_their_control_port_until_idle() {
        let mut f = FtpData::default();
        let (client, now) = ("198.18.1.2".parse().unwrap(), Instant::now());
        let other: IpAddr = "198.18.1.3".parse().unwrap();
        f.reply(
            (client, 21),
            b"227 Entering Passive Mode (198,18,2,2,117,48)\r\n",
            |_| true,
            now,
        );
        f.command((client, 21), b"PORT 198,18,1,2,156,64\r\n", now);
        assert_eq!(f.control_of(client, (30000, 50000), now), Some(21));
        assert_eq!(f.control_of(client, (20, 40000), now), Some(21));
        assert_eq!(f.control_of(other, (30000, 50000), now), None);
        assert_eq!(f.control_of(client, (30001, 50000), now), None);
        f.reply((client, 21), b"229 (|||30009|)\r\n", |p| p != 30009, now);
        assert_eq!(
            f.counts(),
            FtpCounts {
                announced: 2,
                unprotected: 1,
                untracked: 0
            }
        );
        // Each segment keeps its port; ten idle minutes forget it.
        let later = now + DATA_IDLE / 2;
        assert_eq!(f.control_of(client, (30000, 50000), later), Some(21));
        f.expire(now + DATA_IDLE);
        assert_eq!(f.control_of(client, (30000, 50000), later), Some(21));
        assert_eq!(f.control_of(client, (20, 40000), later), None);
    }

    #[test]
    fn past_its_bound_an_announcement_is_counted_not_followed() {
        let mut f = FtpData::default();
        let (client, now) = ("198.18.1.2".parse().unwrap(), Instant::now());
        for port in 0..MAX_DATA as u16 {
            f.follow((client, End::Server, port), 21, now);
        }
        // A port it follows already is still followed (announced again), a new one not.
        f.reply((client, 21), b"229 (|||7|)", |_| true, now);
        assert_eq!(f.counts().untracked, 0);
        f.reply((client, 21), b"229 (|||60000|)", |_| true, now);
        assert_eq!(f.counts().untracked, 1);
        assert_eq!(f.control_of(client, (60000, 1), now), None);
    }
}
