//! Root tests of a worker against the real kernel, in a throwaway namespace pair.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::Worker;
use crate::config::MalformedVerdict;
use crate::driver::board::Board;
use crate::driver::depth::DepthBound;
use crate::driver::nfqueue::testns::{ADDR_A, ADDR_B, NetnsPair, in_netns};
use crate::driver::nfqueue::{KernelQueueStats, Queue, QueueConfig, kernel_queue_stats};
use crate::driver::nft::Selection;
use crate::pipeline::Pipeline;
use crate::stats::QueueCounters;

const PORT: u16 = 9;
const FAST: u16 = 21;
const PRECISE: u16 = 22;

/// A packet routed to a precise queue that nobody listens on never passes: the route
/// carries no bypass flag, so the kernel drops it (on the victim, nothing with a trailer
/// reaches TCP), and the worker, after its short wait, counts it missing and goes on.
/// Here the worker's precise socket is bound in the other namespace, so the queue number
/// it routes to is free where the packet is. The fast queue copies 20 bytes, so the
/// pipeline must read this datagram whole: it routes it.
#[test]
fn a_routed_packet_whose_segments_never_come_is_counted_and_never_passes() {
    let Some(rig) = Rig::start(Side::A, |_| ()) else {
        return;
    };
    rig.send(&[7; 1000]);
    let c = rig.wait_for(|c| c.routed == 1 && c.reasons["routed_packet_missing"] == 1);
    assert_eq!(c.segments, 0, "{c:?}");
    assert_eq!(rig.received(), 0, "the routed datagram passed");
    rig.finish();
}

/// A precise socket that overflows while the kernel cuts a routed super-packet: the
/// segments that fit are answered, the rest are dropped by the kernel (no fail-open on
/// the precise queue) and counted on both sides, the kernel's `k.udrop` (the first
/// only) and our `enobufs`. Here a UDP GSO send of 10 segments meets a precise socket
/// with the least buffer the kernel grants.
#[test]
fn an_overflowing_precise_socket_loses_segments_counted_never_unanswered() {
    let Some(rig) = Rig::start(Side::B, |q| {
        q.set_rcvbuf_bytes(1).expect("shrink the receive buffer");
    }) else {
        return;
    };
    let gso_size: libc::c_int = 1000;
    // SAFETY: `gso_size` outlives the call and its length is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&rig.tx),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&raw const gso_size).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "UDP_SEGMENT: {}", std::io::Error::last_os_error());
    rig.send(&[7; 10_000]);
    let c = rig.wait_for(|c| c.routed == 1 && c.enobufs >= 1);
    assert!(c.segments >= 1 && c.segments < 10, "{c:?}");
    assert_eq!(
        rig.received(),
        c.segments,
        "each answered segment delivered, no other"
    );
    let table = rig.kernel_queues();
    let dropped: u64 = table
        .iter()
        .filter(|q| q.queue == PRECISE)
        .map(|q| q.user_dropped)
        .sum();
    // The kernel counts the first segment that did not fit and frees the rest of the
    // super-packet with it, uncounted (nfqnl_enqueue_packet stops at the first error).
    assert!(dropped >= 1, "{table:?}");
    rig.finish();
}

/// Where the worker's precise socket is bound: `b`, where the packets are queued, or `a`,
/// which leaves the queue number free in `b` (nobody listens there).
enum Side {
    A,
    B,
}

/// A worker in namespace `b` with no role: UDP to port 9 there is queued to it, copied
/// 20 bytes (too few for the headers, so it routes every packet); a socket on that port
/// in `b` and a sender in `a`.
struct Rig {
    pair: NetnsPair,
    worker: Worker,
    stop: Arc<AtomicBool>,
    rx: UdpSocket,
    tx: UdpSocket,
}

impl Rig {
    /// None when the test may not run (not root). `prepare` sees the precise queue
    /// before the worker takes it.
    fn start(precise_in: Side, prepare: impl FnOnce(&Queue)) -> Option<Rig> {
        if !crate::testbed::root_tests_may_run() {
            return None;
        }
        let pair = NetnsPair::new().expect("create namespaces");
        pair.queue_udp(PORT, FAST).expect("add NFQUEUE rule");
        let fast = open(
            &pair.b,
            QueueConfig {
                copy_range: 20,
                gso: true,
                ..QueueConfig::new(FAST)
            },
        );
        let precise = open(
            match precise_in {
                Side::A => &pair.a,
                Side::B => &pair.b,
            },
            // Read as the engine reads it: 20 ms at most.
            QueueConfig {
                recv_timeout: Duration::from_millis(20),
                ..QueueConfig::new(PRECISE)
            },
        );
        prepare(&precise);
        let selection = Selection {
            addresses: vec![format!("{ADDR_B}/32").parse().unwrap()],
            tcp_ports: vec![],
            udp_ports: vec![PORT.to_string().parse().unwrap()],
        };
        let pipeline = Pipeline::new(selection, MalformedVerdict::Drop, None);
        let stop = Arc::new(AtomicBool::new(false));
        let board = Arc::new(Board::new(1, 1, vec![]));
        let stop_flag = Arc::clone(&stop);
        let worker = in_netns(&pair.b, move || {
            Worker::spawn(
                (FAST, fast, Some(precise), DepthBound::new(None, 1024)),
                (pipeline, None),
                (false, None, false),
                (board, 0),
                stop_flag,
            )
        })
        .expect("enter namespace")
        .expect("spawn worker");
        let rx = udp(&pair.b, format!("0.0.0.0:{PORT}"));
        let tx = udp(&pair.a, format!("{ADDR_A}:0"));
        Some(Rig {
            pair,
            worker,
            stop,
            rx,
            tx,
        })
    }

    fn send(&self, payload: &[u8]) {
        self.tx
            .send_to(payload, format!("{ADDR_B}:{PORT}"))
            .expect("send");
    }

    /// Datagrams that arrive until the socket stays quiet for its timeout.
    fn received(&self) -> u64 {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while self.rx.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    }

    /// The worker's counters once `done` holds of them (published every 100 ms).
    fn wait_for(&self, done: impl Fn(&QueueCounters) -> bool) -> QueueCounters {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut c = self.worker.snapshot();
        while !done(&c) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            c = self.worker.snapshot();
        }
        assert!(done(&c), "{c:?}");
        c
    }

    fn kernel_queues(&self) -> Vec<KernelQueueStats> {
        in_netns(&self.pair.b, kernel_queue_stats)
            .expect("enter namespace")
            .expect("queue table")
    }

    /// Nothing left waiting for a verdict; the worker stops cleanly.
    fn finish(self) {
        let table = self.kernel_queues();
        assert!(table.iter().all(|q| q.waiting == 0), "{table:?}");
        self.stop.store(true, Ordering::Relaxed);
        assert!(self.worker.join(), "the worker ended cleanly");
    }
}

fn open(ns: &str, cfg: QueueConfig) -> Queue {
    in_netns(ns, move || Queue::open(&cfg))
        .expect("enter namespace")
        .expect("open queue")
}

fn udp(ns: &str, bind: String) -> UdpSocket {
    let s = in_netns(ns, move || UdpSocket::bind(bind))
        .expect("enter namespace")
        .expect("bind udp");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    s
}
