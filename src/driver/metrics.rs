//! The Prometheus endpoint: `GET /metrics` on `[metrics] listen` answers the engine's
//! counters in the OpenMetrics text format (`crate::metrics`). Plain HTTP/1.x, one
//! request per connection, served on a thread of its own; a client gets 2 s to send its
//! request and read the answer, so a slow or stuck scraper holds nothing else up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::stats::EngineStats;

/// How long a client may take to send its request or read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head read: a scraper's is a few hundred bytes.
const MAX_HEAD: usize = 8192;

/// A bound metrics endpoint.
pub struct MetricsEndpoint {
    listener: TcpListener,
}

impl MetricsEndpoint {
    /// Bind `addr`; an address in use or not on this host is an error naming it.
    pub fn bind(addr: SocketAddr) -> Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr).with_context(|| format!("metrics.listen {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(MetricsEndpoint { listener })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve scrapes on a thread until `stop` is set; `stats` takes each snapshot.
    pub fn serve<F>(self, stop: Arc<AtomicBool>, stats: F) -> std::io::Result<JoinHandle<()>>
    where
        F: Fn() -> EngineStats + Send + 'static,
    {
        let accept = move || self.listener.accept().map(|(stream, _)| stream);
        super::serve::serve(("metrics", "metrics endpoint"), stop, accept, move |s| {
            answer(s, &stats)
        })
    }
}

/// Read one request and answer it: the metrics at `/metrics`, 404 elsewhere, 405 for
/// anything but GET and HEAD.
fn answer(stream: TcpStream, stats: &dyn Fn() -> EngineStats) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(MAX_HEAD as u64));
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The rest of the head: read and ignored (bounded by MAX_HEAD).
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut words = request.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next()) {
        ("GET" | "HEAD", Some("/metrics")) => (
            "200 OK",
            crate::metrics::CONTENT_TYPE,
            crate::metrics::render(&stats()),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "mpolice: the metrics are at /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "mpolice: GET /metrics\n".to_owned(),
        ),
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_the_metrics_and_nothing_else() {
        let e = MetricsEndpoint::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = e.addr().unwrap();
        // A second engine on the same address is refused, naming it.
        let taken = MetricsEndpoint::bind(addr).err().unwrap();
        assert!(
            format!("{taken:#}").contains(&format!("metrics.listen {addr}")),
            "{taken:#}"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let t = e
            .serve(Arc::clone(&stop), || EngineStats {
                role: "mbox".into(),
                uptime_secs: 3,
                ..Default::default()
            })
            .unwrap();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(
            ok.contains("mpolice_uptime_seconds{role=\"mbox\"} 3"),
            "{ok}"
        );
        assert!(ok.ends_with("# EOF\n"), "{ok}");
        let head = get(addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200 OK") && !head.contains("# EOF"),
            "{head}"
        );
        assert!(get(addr, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // Garbage, or a client that sends nothing, costs one connection, no more.
        assert!(get(addr, "\u{1}\u{2}\r\n\r\n").starts_with("HTTP/1.1 405"));
        let silent = TcpStream::connect(addr).unwrap();
        assert!(get(addr, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        drop(silent);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
