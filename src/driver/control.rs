//! The control socket: a running engine serves its stats to `mpolice stats` from another shell.
//!
//! Protocol: the client connects, writes one line (`stats`, or `senders` for the stats
//! with the police's per-sender table), and reads one JSON line back.
//! The socket is a filesystem path, so it is reachable from any network namespace.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::stats::EngineStats;

/// How long the server waits between checks of the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A bound control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ControlSocket {
    /// Bind the socket at `path`, refusing if another engine is serving there.
    pub fn bind(path: &Path) -> Result<ControlSocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("control socket directory {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "control socket {} is in use by a running engine; stop it or set control.socket",
                    path.display()
                );
            }
            // Left behind by an engine that was killed: nobody listens, so reuse the path.
            std::fs::remove_file(path)
                .with_context(|| format!("remove stale control socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("bind control socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Serve requests on a thread until `stop` is set; `snapshot` builds each answer.
    pub fn serve<F>(self, stop: Arc<AtomicBool>, snapshot: F) -> std::io::Result<JoinHandle<()>>
    where
        F: Fn(bool) -> EngineStats + Send + 'static,
    {
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match self.listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(e) = answer(stream, &snapshot) {
                                tracing::debug!("control client: {e}");
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(POLL)
                        }
                        Err(e) => {
                            tracing::warn!("control socket: {e}");
                            std::thread::sleep(POLL)
                        }
                    }
                }
            })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn answer(stream: UnixStream, snapshot: &impl Fn(bool) -> EngineStats) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let mut out = &stream;
    match line.trim() {
        request @ ("stats" | "senders") => {
            serde_json::to_writer(&mut out, &snapshot(request == "senders"))?;
            out.write_all(b"\n")?;
        }
        other => writeln!(
            out,
            "{{\"error\":\"unknown request {other:?}; send stats or senders\"}}"
        )?,
    }
    Ok(())
}

/// Ask the engine behind `path` for its stats, with the per-sender table if `senders`.
pub fn query(path: &Path, senders: bool) -> Result<EngineStats> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "no engine answers on {} (is `mpolice mbox|victim` running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(if senders { b"senders\n" } else { b"stats\n" })?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("bad answer from {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mpolice-test-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn serves_stats_and_refuses_a_second_engine() {
        let path = temp_path("serve");
        let sock = ControlSocket::bind(&path).unwrap();
        let err = ControlSocket::bind(&path).err().unwrap().to_string();
        assert!(err.contains("in use"), "{err}");
        let stop = Arc::new(AtomicBool::new(false));
        let t = sock
            .serve(Arc::clone(&stop), |_| EngineStats {
                role: "victim".into(),
                pid: 7,
                ..Default::default()
            })
            .unwrap();
        let s = query(&path, false).unwrap();
        assert_eq!((s.role.as_str(), s.pid), ("victim", 7));
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(!path.exists(), "socket file removed on exit");
    }

    #[test]
    fn stale_socket_file_is_reused() {
        let path = temp_path("stale");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _sock = ControlSocket::bind(&path).unwrap();
    }

    #[test]
    fn query_without_engine_says_what_to_do() {
        let err = query(&temp_path("absent"), false).unwrap_err().to_string();
        assert!(err.contains("is `mpolice mbox|victim` running"), "{err}");
    }
}
