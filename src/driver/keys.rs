//! The mbox's key file: loaded at start, reloaded when it changes, so keys rotate
//! without a restart.
//!
//! Rotation with overlap: whenever a ring with a previous key is loaded (a key file of
//! two lines: previous, then current), the previous key still verifies for one detection
//! period and is then dropped. A key file that fails to parse is refused with a log line
//! naming the line at fault; the keys in use stay. Key bytes never reach a log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::capability::{KeyRing, SharedKeys};

/// Watches the key file and publishes its rings to the workers.
pub struct KeyWatch {
    path: PathBuf,
    modified: Option<SystemTime>,
    period: Duration,
    shared: Arc<SharedKeys>,
    /// The text of the ring in use, to rebuild it without its previous key.
    text: String,
    expire_previous_at: Option<Instant>,
    /// The last reload error logged, so a broken file is not reported every tick.
    last_error: Option<String>,
}

impl KeyWatch {
    /// Load the key file at `path`; a previous key in it expires one `period` from `now`.
    pub fn load(path: &Path, period: Duration, now: Instant) -> Result<KeyWatch> {
        let (text, modified) = read_secret(path)?;
        let ring = parse(path, &text)?;
        let expire_previous_at = ring.previous_id().map(|_| now + period);
        Ok(KeyWatch {
            path: path.to_path_buf(),
            modified,
            period,
            shared: SharedKeys::new(ring),
            text,
            expire_previous_at,
            last_error: None,
        })
    }

    /// The keys the workers read.
    pub fn shared(&self) -> &Arc<SharedKeys> {
        &self.shared
    }

    /// Reload the file if it changed; drop the previous key once its period is over.
    pub fn tick(&mut self, now: Instant) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified != self.modified {
            match read_secret(&self.path)
                .and_then(|(text, _)| parse(&self.path, &text).map(|r| (text, r)))
            {
                Ok((text, ring)) => {
                    let (id, _) = ring.current();
                    match ring.previous_id() {
                        Some(prev) => tracing::info!(
                            "key file reloaded: signing with key id {id}; key id {prev} still verifies for {:?}",
                            self.period
                        ),
                        None => tracing::info!("key file reloaded: signing with key id {id}"),
                    }
                    self.expire_previous_at = ring.previous_id().map(|_| now + self.period);
                    self.shared.replace(ring);
                    self.text = text;
                    // Only now: a half-written file that failed to parse is read again
                    // once it is whole, even if its time stamp did not move.
                    self.modified = modified;
                    self.last_error = None;
                }
                Err(e) => {
                    // Retried every tick until it parses; said once per distinct error.
                    let msg = format!("{e:#}");
                    if self.last_error.as_ref() != Some(&msg) {
                        tracing::error!("{msg}; keeping the keys in use");
                        self.last_error = Some(msg);
                    }
                }
            }
        }
        if self.expire_previous_at.is_some_and(|t| now >= t) {
            self.expire_previous_at = None;
            if let Ok(mut ring) = parse(&self.path, &self.text) {
                if let Some(prev) = ring.previous_id() {
                    tracing::info!("key id {prev} no longer verifies");
                }
                ring.expire_previous();
                self.shared.replace(ring);
            }
        }
    }
}

fn parse(path: &Path, text: &str) -> Result<KeyRing> {
    KeyRing::parse(text)
        .map_err(|e| anyhow::anyhow!("capabilities.key_file {}: {e}", path.display()))
}

/// Read the key file, refusing one that other users can read.
fn read_secret(path: &Path) -> Result<(String, Option<SystemTime>)> {
    use std::os::unix::fs::PermissionsExt;
    let what = || format!("capabilities.key_file {}", path.display());
    let meta = std::fs::metadata(path).with_context(what)?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{}: readable by other users (mode {:o}); chmod 600 it",
            what(),
            mode & 0o777
        );
    }
    let text = std::fs::read_to_string(path).with_context(what)?;
    Ok((text, meta.modified().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::generate_key_line;
    use std::os::unix::fs::PermissionsExt;

    fn write(path: &Path, lines: &[String], mode: u32) {
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mpolice-keys-{}-{name}", std::process::id()))
    }

    #[test]
    fn rotation_keeps_the_previous_key_for_one_period() {
        let path = temp("rotate");
        let (k1, k2) = (generate_key_line(1).unwrap(), generate_key_line(2).unwrap());
        write(&path, std::slice::from_ref(&k1), 0o600);
        let t0 = Instant::now();
        let period = Duration::from_secs(4);
        let mut w = KeyWatch::load(&path, period, t0).unwrap();
        let mut r = w
            .shared()
            .reader(crate::capability::RunId::from_bytes([0; 16]));
        assert_eq!((r.ring().current().0, r.ring().previous_id()), (1, None));
        // The file changes (mtime resolution is coarse: make it differ for sure).
        write(&path, &[k1, k2], 0o600);
        w.modified = None;
        w.tick(t0 + Duration::from_secs(1));
        assert_eq!((r.ring().current().0, r.ring().previous_id()), (2, Some(1)));
        w.tick(t0 + Duration::from_secs(4));
        assert_eq!(r.ring().previous_id(), Some(1), "still within the period");
        w.tick(t0 + Duration::from_secs(5));
        assert_eq!((r.ring().current().0, r.ring().previous_id()), (2, None));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_broken_key_file_keeps_the_keys_in_use() {
        let path = temp("broken");
        write(&path, &[generate_key_line(3).unwrap()], 0o600);
        let t0 = Instant::now();
        let mut w = KeyWatch::load(&path, Duration::from_secs(4), t0).unwrap();
        write(&path, &["3 nothex".to_string()], 0o600);
        w.modified = None;
        w.tick(t0);
        assert_eq!(
            w.shared()
                .reader(crate::capability::RunId::from_bytes([0; 16]))
                .ring()
                .current()
                .0,
            3
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let path = temp("open");
        write(&path, &[generate_key_line(1).unwrap()], 0o644);
        let e = KeyWatch::load(&path, Duration::from_secs(4), Instant::now())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("chmod 600"), "{e:#}");
        std::fs::remove_file(&path).unwrap();
    }
}
