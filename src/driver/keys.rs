//! A key file (the mbox's MAC keys, or the tunnel keys mbox and victim share): loaded at
//! start, reloaded when its content changes, so keys rotate without a restart.
//!
//! Rotation with overlap: whenever a ring with a previous key is loaded (a key file of
//! two lines: previous, then current), the previous key still verifies for one detection
//! period and is then dropped. A key file that fails to parse is refused with a log line
//! naming the line at fault; the keys in use stay. Key bytes never reach a log.
//!
//! Invariants: the file is opened once per read, without following a symlink, and every
//! check (regular file, owner root or our effective user, no group or other bits) is made
//! on the open file that is then read, so it cannot be swapped in between. The text is
//! read into one buffer of its final size that is zeroed when dropped; parsing borrows
//! from it (the key bytes it decodes are zeroed by `Key::from_bytes`). Only a change of
//! content reloads: the SHA-256 of the bytes in force is kept, so a file rewritten
//! unchanged (or only touched) is neither reloaded nor logged, and its previous key keeps
//! its original expiry.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::capability::{KeyRing, SharedKeys};

/// A key file is two short lines and comments; anything larger is not one.
const MAX_LEN: u64 = 64 * 1024;
/// Seconds after its last change during which a file is read on every tick: a rewrite
/// within the file system's time stamp granularity leaves the stamp as it was.
const RACY_SECS: i64 = 2;

/// SHA-256 of a key file's bytes. One-way: holding it reveals nothing of the keys.
type ContentDigest = [u8; 32];

/// What `stat` tells about the file: a change in any of these is worth a look.
/// ctime moves on every write, touch, chmod and rename, and no user can set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Changed too recently for an unchanged stamp to prove unchanged content.
    fn young(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.ctime.0 >= now.saturating_sub(RACY_SECS)
    }
}

/// The end of a previous key's grace period.
struct Expiry {
    at: Instant,
    previous_id: u8,
    /// The ring to publish then. Built from the text when it was read (a second parse),
    /// so no plaintext is kept to rebuild it: a ring holds only keyed HMAC states, which
    /// are zeroed when dropped.
    without_previous: KeyRing,
}

/// Watches the key file and publishes its rings to the workers.
pub struct KeyWatch {
    /// The file, and the config key that names it (in every message about it).
    path: PathBuf,
    key: &'static str,
    /// The file as last read; the next tick reads it again only if this moved.
    seen: Option<Stamp>,
    /// Digest of the content in force: the same bytes never reload.
    digest: ContentDigest,
    period: Duration,
    shared: Arc<SharedKeys>,
    /// When the ring in force has a previous key: when and how it stops verifying.
    expiry: Option<Expiry>,
    /// The last reload error logged, so a broken file is not reported every tick.
    last_error: Option<String>,
}

impl KeyWatch {
    /// Load the key file at `path`, named by config key `key`; a previous key in it
    /// expires one `period` from `now`.
    pub fn load(
        path: &Path,
        key: &'static str,
        period: Duration,
        now: Instant,
    ) -> Result<KeyWatch> {
        let (text, stamp) = read_secret(path, key)?;
        let (ring, expiry) = parse(path, key, &text, now + period)?;
        Ok(KeyWatch {
            path: path.to_path_buf(),
            key,
            seen: Some(stamp),
            digest: Sha256::digest(&*text).into(),
            period,
            shared: SharedKeys::new(ring),
            expiry,
            last_error: None,
        })
    }

    /// The keys the workers read.
    pub fn shared(&self) -> &Arc<SharedKeys> {
        &self.shared
    }

    /// Reload the file if its content changed; drop the previous key once its period is over.
    pub fn tick(&mut self, now: Instant) {
        // lstat is cheap and reads no secret; content decides once it is worth a look.
        let stamp = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|m| Stamp::of(&m));
        if stamp.is_some_and(|s| Some(s) != self.seen || s.young()) {
            if let Err(e) = self.reload(now) {
                // Retried every tick until it loads; said once per distinct error.
                let msg = format!("{e:#}");
                if self.last_error.as_ref() != Some(&msg) {
                    tracing::error!("{msg}; keeping the keys in use");
                    self.last_error = Some(msg);
                }
            }
        }
        if let Some(e) = self.expiry.take_if(|e| now >= e.at) {
            tracing::info!("{}: key id {} no longer verifies", self.key, e.previous_id);
            self.shared.replace(e.without_previous);
        }
    }

    /// Read the file and publish its ring if the content differs from the one in force.
    fn reload(&mut self, now: Instant) -> Result<()> {
        let (text, stamp) = read_secret(&self.path, self.key)?;
        let digest: ContentDigest = Sha256::digest(&*text).into();
        if digest != self.digest {
            let (ring, expiry) = parse(&self.path, self.key, &text, now + self.period)?;
            let (id, _) = ring.current();
            match ring.previous_id() {
                Some(prev) => tracing::info!(
                    "{} reloaded: signing with key id {id}; key id {prev} still verifies for {:?}",
                    self.key,
                    self.period
                ),
                None => tracing::info!("{} reloaded: signing with key id {id}", self.key),
            }
            self.shared.replace(ring);
            self.expiry = expiry;
            self.digest = digest;
        }
        // Only once it loaded: a half-written file is read again once it is whole, even
        // if its stamp did not move.
        self.seen = Some(stamp);
        self.last_error = None;
        Ok(())
    }
}

/// Parse the key file's bytes into the ring to use now and, if it has a previous key,
/// the ring without it to publish at `expire_at`.
fn parse(
    path: &Path,
    key: &str,
    text: &[u8],
    expire_at: Instant,
) -> Result<(KeyRing, Option<Expiry>)> {
    let what = || format!("{key} {}", path.display());
    let text = std::str::from_utf8(text).map_err(|_| anyhow!("{}: not UTF-8 text", what()))?;
    let ring_of = || KeyRing::parse(text).map_err(|e| anyhow!("{}: {e}", what()));
    let ring = ring_of()?;
    let expiry = match ring.previous_id() {
        Some(previous_id) => {
            let mut without_previous = ring_of()?;
            without_previous.expire_previous();
            Some(Expiry {
                at: expire_at,
                previous_id,
                without_previous,
            })
        }
        None => None,
    };
    Ok((ring, expiry))
}

/// Read the key file through one handle that does not follow a symlink, refusing
/// anything but a regular file of ours that only its owner can read.
fn read_secret(path: &Path, key: &str) -> Result<(Zeroizing<Vec<u8>>, Stamp)> {
    let what = || format!("{key} {}", path.display());
    let mut file = OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO must not hang the engine (it is refused below);
        // O_NOCTTY: nor may opening a terminal make it ours.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => anyhow!(
                "{}: is a symbolic link; point key_file at the file itself",
                what()
            ),
            _ => anyhow::Error::new(e).context(what()),
        })?;
    let meta = file.metadata().with_context(what)?;
    if !meta.file_type().is_file() {
        bail!("{}: not a regular file; point key_file at one", what());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != 0 && meta.uid() != euid {
        bail!(
            "{}: owned by uid {}; chown root (or to uid {euid}, which runs the engine)",
            what(),
            meta.uid()
        );
    }
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{}: readable by other users (mode {:o}); chmod 600 it",
            what(),
            mode & 0o777
        );
    }
    if meta.len() > MAX_LEN {
        bail!("{}: {} bytes, too large for a key file", what(), meta.len());
    }
    // One allocation of the final size, never grown: growing would leave an unzeroed
    // copy of the text in freed memory. One byte spare tells a file that grew since fstat.
    let mut buf = Zeroizing::new(vec![0u8; meta.len() as usize + 1]);
    let n = read_full(&mut file, &mut buf).with_context(what)?;
    if n == buf.len() {
        bail!("{}: changed while being read; will read it again", what());
    }
    buf.truncate(n);
    Ok((buf, Stamp::of(&meta)))
}

/// Fill `buf` from `file` until it is full or the file ends; return the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{RunId, generate_key_line};

    fn write(path: &Path, lines: &[String], mode: u32) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mpolice-keys-{}-{name}", std::process::id()))
    }

    fn load_err(path: &Path) -> String {
        let e = KeyWatch::load(
            path,
            "capabilities.key_file",
            Duration::from_secs(4),
            Instant::now(),
        )
        .err()
        .expect("refused");
        format!("{e:#}")
    }

    /// (current id, previous id) of the ring the workers see.
    fn ids(w: &KeyWatch) -> (u8, Option<u8>) {
        let mut r = w.shared().reader(RunId::from_bytes([0; 16]));
        let ring = r.ring();
        (ring.current().0, ring.previous_id())
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_one_period() {
        let path = temp("rotate");
        let (k1, k2) = (generate_key_line(1).unwrap(), generate_key_line(2).unwrap());
        write(&path, std::slice::from_ref(&k1), 0o600);
        let t0 = Instant::now();
        let mut w =
            KeyWatch::load(&path, "capabilities.key_file", Duration::from_secs(4), t0).unwrap();
        assert_eq!(ids(&w), (1, None));
        // Rewritten in place at once, likely within one time stamp granule.
        write(&path, &[k1, k2], 0o600);
        w.tick(t0 + Duration::from_secs(1));
        assert_eq!(ids(&w), (2, Some(1)));
        w.tick(t0 + Duration::from_secs(4));
        assert_eq!(ids(&w), (2, Some(1)), "still within the period");
        w.tick(t0 + Duration::from_secs(5));
        assert_eq!(ids(&w), (2, None));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_broken_key_file_keeps_the_keys_in_use_until_fixed() {
        let path = temp("broken");
        write(&path, &[generate_key_line(3).unwrap()], 0o600);
        let t0 = Instant::now();
        let mut w =
            KeyWatch::load(&path, "capabilities.key_file", Duration::from_secs(4), t0).unwrap();
        write(&path, &["3 nothex".to_string()], 0o600);
        w.tick(t0);
        assert_eq!(ids(&w), (3, None));
        assert!(w.last_error.as_ref().is_some_and(|e| e.contains("line 1")));
        write(&path, &[generate_key_line(4).unwrap()], 0o600);
        w.tick(t0);
        assert_eq!(ids(&w), (4, None));
        assert_eq!(w.last_error, None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn touching_an_unchanged_file_neither_reloads_nor_extends_the_grace_period() {
        let path = temp("touch");
        let lines = [generate_key_line(1).unwrap(), generate_key_line(2).unwrap()];
        write(&path, &lines, 0o600);
        let t0 = Instant::now();
        let mut w =
            KeyWatch::load(&path, "capabilities.key_file", Duration::from_secs(4), t0).unwrap();
        let mut reader = w.shared().reader(RunId::from_bytes([0; 16]));
        let before: *const KeyRing = reader.ring();
        let touch = |secs| {
            let f = File::options().write(true).open(&path).unwrap();
            f.set_modified(SystemTime::now() + Duration::from_secs(secs))
                .unwrap();
        };
        touch(3600);
        w.tick(t0 + Duration::from_secs(3));
        assert!(std::ptr::eq(before, reader.ring()), "no ring published");
        // Rewritten with the same bytes: a new stamp, the same content.
        write(&path, &lines, 0o600);
        w.tick(t0 + Duration::from_secs(3));
        assert!(std::ptr::eq(before, reader.ring()), "no ring published");
        assert_eq!(ids(&w), (2, Some(1)));
        w.tick(t0 + Duration::from_secs(4));
        assert_eq!(ids(&w), (2, None), "expired at the original time");
        touch(7200);
        w.tick(t0 + Duration::from_secs(5));
        assert_eq!(ids(&w), (2, None), "an expired key stays expired");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_rewrite_within_one_time_stamp_granule_is_seen() {
        let path = temp("granule");
        write(&path, &[generate_key_line(1).unwrap()], 0o600);
        let t0 = Instant::now();
        let mut w =
            KeyWatch::load(&path, "capabilities.key_file", Duration::from_secs(4), t0).unwrap();
        write(&path, &[generate_key_line(2).unwrap()], 0o600);
        // As on a file system with coarse time stamps: the stamp did not move.
        w.seen = Some(Stamp::of(&std::fs::metadata(&path).unwrap()));
        w.tick(t0);
        assert_eq!(ids(&w), (2, None));
        let old = Stamp {
            ctime: (0, 0),
            ..w.seen.unwrap()
        };
        assert!(!old.young(), "an old stamp is trusted");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let path = temp("open");
        write(&path, &[generate_key_line(1).unwrap()], 0o640);
        let e = load_err(&path);
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_symlink_is_refused() {
        let (target, link) = (temp("target"), temp("link"));
        write(&target, &[generate_key_line(1).unwrap()], 0o600);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = load_err(&link);
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_file(&target).unwrap();
    }

    #[test]
    fn a_key_file_owned_by_another_user_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: only root can give a file away");
            return;
        }
        let path = temp("owner");
        write(&path, &[generate_key_line(1).unwrap()], 0o600);
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let e = load_err(&path);
        assert!(e.contains("owned by uid 65534; chown root"), "{e}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_key_file_that_is_not_a_regular_file_is_refused() {
        let dir = temp("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir(&dir).unwrap();

        // A FIFO with no writer: opening it must not block.
        let fifo = temp("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = load_err(&fifo);
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
    }
}
