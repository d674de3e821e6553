//! The control socket: a running engine serves its stats to `mpolice stats` from another shell.
//!
//! Protocol: the client connects, writes one request line, and reads one JSON line back:
//! `stats`; `senders` (the stats with the police's per-sender table); `withhold list`,
//! `withhold add PREFIX`, `withhold remove PREFIX` (the victim's senders it returns no
//! feedback for). Only users who may write the socket file (root, by its mode) can
//! connect at all.
//! The socket is a filesystem path, so it is reachable from any network namespace.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::driver::nft::Prefix;
use crate::driver::policies::PortsRequest;
use crate::stats::EngineStats;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Stats,
    /// The stats with the police's per-sender table.
    Senders,
    WithholdList,
    WithholdAdd(Prefix),
    WithholdRemove(Prefix),
    /// Look at or change the port policies.
    Ports(PortsRequest),
    /// Read the config file again and put it in force.
    Reload,
}

impl Request {
    /// The request line for this request.
    pub fn line(&self) -> String {
        match self {
            Request::Stats => "stats".into(),
            Request::Senders => "senders".into(),
            Request::WithholdList => "withhold list".into(),
            Request::WithholdAdd(p) => format!("withhold add {p}"),
            Request::WithholdRemove(p) => format!("withhold remove {p}"),
            Request::Ports(r) => format!("ports {}", r.line()),
            Request::Reload => "reload".into(),
        }
    }

    /// Read a request line; the error says what is understood.
    pub fn parse(line: &str) -> Result<Request, String> {
        if let Some(rest) = line.trim_start().strip_prefix("ports ") {
            return PortsRequest::parse(rest).map(Request::Ports);
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let prefix = |w: &str| w.parse::<Prefix>().map_err(|e| format!("{w:?}: {e}"));
        match words.as_slice() {
            ["stats"] => Ok(Request::Stats),
            ["senders"] => Ok(Request::Senders),
            ["reload"] => Ok(Request::Reload),
            ["withhold", "list"] => Ok(Request::WithholdList),
            ["withhold", "add", p] => prefix(p).map(Request::WithholdAdd),
            ["withhold", "remove", p] => prefix(p).map(Request::WithholdRemove),
            _ => Err(format!(
                "unknown request {line:?}; send stats, senders, reload, withhold list|add PREFIX|remove PREFIX, or ports ..."
            )),
        }
    }
}

/// The answer to a `withhold` request: the list in force, and whether this changed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Withheld {
    pub withheld: Vec<String>,
    pub changed: bool,
}

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
        // Requests change what the engine does (withhold, ports): for its owner only,
        // whatever the umask.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restrict control socket {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlSocket {
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Serve requests on a thread until `stop` is set; `handle` answers each with a
    /// JSON value (or an error message).
    pub fn serve<F>(self, stop: Arc<AtomicBool>, handle: F) -> std::io::Result<JoinHandle<()>>
    where
        F: Fn(&Request) -> Result<serde_json::Value, String> + Send + 'static,
    {
        // The socket moves into the thread: its file goes when the thread ends.
        let accept = move || self.listener.accept().map(|(stream, _)| stream);
        super::serve::serve(("control", "control socket"), stop, accept, move |s| {
            answer(s, &handle)
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

type Handler = dyn Fn(&Request) -> Result<serde_json::Value, String>;

fn answer(stream: UnixStream, handle: &Handler) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let answer = Request::parse(line.trim())
        .and_then(|r| handle(&r))
        .unwrap_or_else(|e| serde_json::json!({ "error": e }));
    let mut out = &stream;
    serde_json::to_writer(&mut out, &answer)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Send `request` to the engine behind `path` and read its JSON answer as `T`.
pub fn ask<T: serde::de::DeserializeOwned>(path: &Path, request: &Request) -> Result<T> {
    let stream = UnixStream::connect(path).with_context(|| {
        format!(
            "no engine answers on {} (is `mpolice mbox|victim` running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(format!("{}\n", request.line()).as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let value: serde_json::Value = serde_json::from_str(&line)
        .with_context(|| format!("bad answer from {}", path.display()))?;
    if let Some(e) = value.get("error").and_then(|e| e.as_str()) {
        bail!("{}: {e}", path.display());
    }
    serde_json::from_value(value).with_context(|| format!("bad answer from {}", path.display()))
}

/// Ask the engine behind `path` for its stats, with the per-sender table if `senders`.
pub fn query(path: &Path, senders: bool) -> Result<EngineStats> {
    ask(
        path,
        if senders {
            &Request::Senders
        } else {
            &Request::Stats
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mpolice-test-{}-{name}.sock", std::process::id()))
    }

    #[test]
    fn serves_stats_and_refuses_a_second_engine() {
        let path = temp_path("serve");
        let sock = ControlSocket::bind(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "its owner's alone");
        let err = ControlSocket::bind(&path).err().unwrap().to_string();
        assert!(err.contains("in use"), "{err}");
        let stop = Arc::new(AtomicBool::new(false));
        let t = sock
            .serve(Arc::clone(&stop), |r| match r {
                Request::Stats => Ok(serde_json::to_value(EngineStats {
                    role: "victim".into(),
                    pid: 7,
                    ..Default::default()
                })
                .unwrap()),
                other => Err(format!("not here: {other:?}")),
            })
            .unwrap();
        let s = query(&path, false).unwrap();
        assert_eq!((s.role.as_str(), s.pid), ("victim", 7));
        let e = query(&path, true).unwrap_err().to_string();
        assert!(e.contains("not here: Senders"), "{e}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(!path.exists(), "socket file removed on exit");
    }

    #[test]
    fn requests_read_back_as_written() {
        for r in [
            Request::Stats,
            Request::Senders,
            Request::WithholdList,
            Request::WithholdAdd("198.18.9.0/24".parse().unwrap()),
            Request::WithholdRemove("2001:2::9/128".parse().unwrap()),
        ] {
            assert_eq!(Request::parse(&r.line()), Ok(r));
        }
        for bad in [
            "",
            "stat",
            "withhold add",
            "withhold add 198.18.9.0/33",
            "withhold x y",
        ] {
            assert!(Request::parse(bad).is_err(), "{bad:?}");
        }
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
