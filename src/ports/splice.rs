//! Content rules: the engine answers a new connection's handshake on the server's
//! behalf, reads the client's first data, and only then opens the connection to the
//! port that data names, joining the two with sequence translation.
//!
//! One connection, step by step (the client's SYN is to a port whose rule forwards by
//! content):
//! 1. The SYN is held in the queue (no verdict yet) and the engine sends the client a
//!    SYN-ACK of its own, with an initial sequence number of its own. The held SYN loses
//!    the options that SYN-ACK did not offer back (window scale, SACK, timestamps) and
//!    its ECN flags, so the server and the client agree on what the connection uses.
//! 2. The client's ACK is held; its first data (or a FIN) is held and read: the port is
//!    the rule's choice for it ([`super::Forwarder::content`]). No data within
//!    [`WAIT_FOR_DATA`] (a protocol where the server speaks first): the default port.
//! 3. The SYN is released with the chosen port's mark (the nat chain redirects it); the
//!    server answers with its own SYN-ACK, which the engine takes (dropped, counted):
//!    the difference of the two initial sequence numbers is the connection's `delta`.
//!    The held ACK and data are released with their acknowledgements moved by it.
//! 4. For the connection's life, acknowledgements to the server move by `delta` and
//!    sequence numbers from it move back. Conntrack sees the server's numbers both ways
//!    (the inbound chain runs before it, the outbound one after), and its NAT carries
//!    the port, as for any forwarded connection.
//!
//! Pure: the driver gives each packet's queue id, sends the packets it is asked to and
//! releases held packets as told ([`Action`]). Bounded: [`MAX_OPENING`] connections
//! being opened, [`MAX_JOINED`] joined, per worker; past either, a new connection goes
//! to its rule's default port unexamined (counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Forwarder, splitmix64};
use crate::pipeline::Reason;
use crate::wire::build::Builder;
use crate::wire::{self, Parsed, TcpEdit, tcp};

/// How long the engine waits for a client's first data before it opens the connection
/// to the default port.
pub const WAIT_FOR_DATA: Duration = Duration::from_secs(2);
/// How long the server has to answer the released SYN; then the client gets a reset.
pub const WAIT_FOR_SERVER: Duration = Duration::from_secs(3);
/// A joined connection with no packet for this long is forgotten (counted).
pub const IDLE: Duration = Duration::from_secs(3600);
/// How long a closed connection's translation stays, for retransmitted FINs and ACKs.
pub const LINGER: Duration = Duration::from_secs(60);
/// Connections answered by the engine and not yet joined, per worker. Each keeps at
/// most two packets in the kernel's queue, where they count against its length.
pub const MAX_OPENING: usize = 256;
/// Joined connections, per worker.
pub const MAX_JOINED: usize = 65_536;
/// How often joined connections are checked for idleness.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// The MSS the engine assumes for a client whose SYN names none (RFC 9293).
const DEFAULT_MSS: u16 = 536;
/// The window of the engine's SYN-ACK (unscaled: no window scale is offered).
const WINDOW: u16 = 65_535;
/// The SYN options the engine's SYN-ACK does not offer back.
const UNOFFERED: &[u8] = &[
    tcp::OPT_WINDOW_SCALE,
    tcp::OPT_SACK_PERMITTED,
    tcp::OPT_TIMESTAMPS,
];

/// Something the driver must do for the splicer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this IP packet (the engine's SYN-ACK, or a reset).
    Send(Vec<u8>),
    /// Answer held packet `id`: accept it as `bytes`, with `mark`; or drop it.
    Release {
        id: u32,
        verdict: Result<(Vec<u8>, Option<u32>), Reason>,
    },
}

/// What to do with a packet now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Not a content rule's connection, or nothing to change: carry on.
    Pass,
    /// Rewritten, its checksum fixed.
    Edited,
    /// Kept in the queue: the splicer releases it later.
    Hold,
    /// A content rule's connection the splicer could not take (full): accept it with
    /// this mark (the default port's), unexamined.
    Forward(Option<u32>),
    Drop(Reason),
}

/// What the splicer did, for the stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpliceCounts {
    /// Handshakes the engine answered.
    pub answered: u64,
    /// Connections opened by their first data, and by waiting for it in vain.
    pub examined: u64,
    pub waited: u64,
    /// Connections the server took (its SYN-ACK came).
    pub joined: u64,
    /// Connections the server refused or never answered: the client got a reset.
    pub failed: u64,
    /// Connections the client reset or left before the server took them.
    pub abandoned: u64,
    /// New connections sent to the default port unexamined: the tables were full.
    pub full: u64,
    /// Joined connections forgotten after `IDLE` without a packet.
    pub expired: u64,
    /// Connections held now: being opened, and joined.
    pub opening: u64,
    pub open: u64,
}

impl std::ops::AddAssign for SpliceCounts {
    fn add_assign(&mut self, o: SpliceCounts) {
        self.answered += o.answered;
        self.examined += o.examined;
        self.waited += o.waited;
        self.joined += o.joined;
        self.failed += o.failed;
        self.abandoned += o.abandoned;
        self.full += o.full;
        self.expired += o.expired;
        self.opening += o.opening;
        self.open += o.open;
    }
}

/// A connection: the client's address and port, and the protected address and port it
/// connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    client: SocketAddr,
    server: SocketAddr,
}

/// A packet kept in the queue: its id and its bytes as they will be released.
#[derive(Debug)]
struct Held {
    id: u32,
    bytes: Vec<u8>,
}

#[derive(Debug)]
enum State {
    /// The engine's SYN-ACK is out: waiting for the client's first data.
    Answered { syn: Held, ack: Option<Held> },
    /// The SYN is released: waiting for the server's SYN-ACK; the client's ACK and data
    /// wait with it.
    Opening(Vec<Held>),
    /// Both ends joined: acknowledgements to the server move by `delta`.
    Joined(Joined),
}

#[derive(Debug)]
struct Joined {
    delta: u32,
    /// The sides that sent a FIN: `CLIENT`, `SERVER`.
    fins: u8,
    /// When both sides had sent a FIN, or either a reset.
    closed: Option<Instant>,
}

const CLIENT: u8 = 1;
const SERVER: u8 = 2;

impl Joined {
    /// A packet with `flags` from `side`.
    fn seen(&mut self, flags: u8, side: u8, now: Instant) {
        if flags & tcp::FIN != 0 {
            self.fins |= side;
        }
        if flags & tcp::RST != 0 || self.fins == CLIENT | SERVER {
            self.closed.get_or_insert(now);
        }
    }
}

#[derive(Debug)]
struct Conn {
    client_isn: u32,
    /// The engine's initial sequence number: the one the client knows.
    isn: u32,
    /// The MSS the engine's SYN-ACK offered.
    mss: u16,
    /// When the state began (opening), or the last packet (joined).
    since: Instant,
    state: State,
}

/// The content rules' connections of one worker.
#[derive(Debug)]
pub struct Splicer {
    conns: HashMap<Key, Conn>,
    /// The connections being opened (answered or opening), for the timer.
    opening: Vec<Key>,
    /// State of the engine's initial sequence numbers (splitmix64, seeded by the driver).
    isn: u64,
    counts: SpliceCounts,
    actions: Vec<Action>,
    last_sweep: Option<Instant>,
}

impl Splicer {
    /// An empty splicer; `seed` starts its initial sequence numbers.
    pub fn new(seed: u64) -> Splicer {
        Splicer {
            conns: HashMap::new(),
            opening: Vec::new(),
            isn: seed,
            counts: SpliceCounts::default(),
            actions: Vec::new(),
            last_sweep: None,
        }
    }

    /// Whether it holds no connection (then no packet needs a lookup).
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Whether the packet `p` belongs to a connection it holds (either direction).
    pub fn holds(&self, p: &Parsed) -> bool {
        let Some((s, d)) = p.tcp().map(|t| (t.src_port, t.dst_port)) else {
            return false;
        };
        let (a, b) = (SocketAddr::new(p.src, s), SocketAddr::new(p.dst, d));
        [(a, b), (b, a)]
            .iter()
            .any(|&(client, server)| self.conns.contains_key(&Key { client, server }))
    }

    /// What it counted, with the connections it holds now.
    pub fn counts(&self) -> SpliceCounts {
        let opening = self.opening.len() as u64;
        SpliceCounts {
            opening,
            open: self.conns.len() as u64 - opening,
            ..self.counts
        }
    }

    /// Take what the driver must do, in order.
    pub fn take_actions(&mut self) -> std::vec::Drain<'_, Action> {
        self.actions.drain(..)
    }

    /// A packet to a protected port (`id`: its queue id, None if it cannot be held),
    /// after the role's stages: start, advance or translate its connection. `mss` is
    /// the most the engine's SYN-ACK may offer.
    #[allow(clippy::ptr_arg)]
    pub fn inbound(
        &mut self,
        fwd: &mut Forwarder,
        (id, mss): (Option<u32>, u16),
        buf: &mut Vec<u8>,
        p: &Parsed,
        now: Instant,
    ) -> Step {
        let Some(t) = p.tcp() else {
            return Step::Pass;
        };
        let key = Key {
            client: SocketAddr::new(p.src, t.src_port),
            server: SocketAddr::new(p.dst, t.dst_port),
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            let new = t.flags & (tcp::SYN | tcp::ACK | tcp::RST) == tcp::SYN;
            if !new || !fwd.examines(t.dst_port) {
                return Step::Pass;
            }
            return self.answer(fwd, key, (id, mss), buf, p, now);
        };
        match &mut conn.state {
            State::Answered { .. } => self.answered(fwd, key, id, buf, p, now),
            State::Opening(_) if t.flags & tcp::RST != 0 => {
                // The server has only the SYN: the reset closes it there too.
                let held = self.forget(key);
                self.abandon(held);
                Step::Pass
            }
            State::Opening(_) => Step::Drop(Reason::SpliceWaiting),
            State::Joined(j) => {
                j.seen(t.flags, CLIENT, now);
                conn.since = now;
                if t.flags & tcp::ACK == 0 {
                    return Step::Pass;
                }
                edited(buf, p, &[TcpEdit::Ack(t.ack.wrapping_add(j.delta))])
            }
        }
    }

    /// A packet from a protected port (before the role's stages): the server's SYN-ACK
    /// joins its connection; later packets are translated.
    #[allow(clippy::ptr_arg)]
    pub fn outbound(&mut self, buf: &mut Vec<u8>, p: &Parsed, now: Instant) -> Step {
        let Some(t) = p.tcp() else {
            return Step::Pass;
        };
        let key = Key {
            client: SocketAddr::new(p.dst, t.dst_port),
            server: SocketAddr::new(p.src, t.src_port),
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return Step::Pass;
        };
        let syn_ack = t.flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK;
        // The engine's own SYN-ACK, on its way out.
        if syn_ack && t.seq == conn.isn {
            return Step::Pass;
        }
        let expected = conn.client_isn.wrapping_add(1);
        match &mut conn.state {
            // Nothing of the server's belongs to a connection it has not seen.
            State::Answered { .. } => Step::Pass,
            State::Opening(_) if syn_ack && t.ack == expected => {
                let delta = t.seq.wrapping_sub(conn.isn);
                let State::Opening(held) = std::mem::replace(
                    &mut conn.state,
                    State::Joined(Joined {
                        delta,
                        fins: 0,
                        closed: None,
                    }),
                ) else {
                    return Step::Pass;
                };
                conn.since = now;
                self.opening.retain(|k| *k != key);
                self.counts.joined += 1;
                for h in held {
                    self.release_moved(h, delta);
                }
                Step::Drop(Reason::SpliceServerHandshake)
            }
            State::Opening(_) if t.flags & tcp::RST != 0 => {
                // Nothing listens on the chosen port: the client hears it at once.
                let seq = conn.isn.wrapping_add(1);
                let held = self.forget(key);
                self.fail(held);
                edited(buf, p, &[TcpEdit::Seq(seq)])
            }
            State::Opening(_) => Step::Pass,
            // A retransmitted SYN-ACK: the client has the engine's.
            State::Joined(_) if syn_ack => Step::Drop(Reason::SpliceServerHandshake),
            State::Joined(j) => {
                j.seen(t.flags, SERVER, now);
                conn.since = now;
                edited(buf, p, &[TcpEdit::Seq(t.seq.wrapping_sub(j.delta))])
            }
        }
    }

    /// Run the timers: open what waited too long for data, reset what the server never
    /// answered, forget what closed or idled.
    pub fn expire(&mut self, fwd: &mut Forwarder, now: Instant) {
        let due: Vec<Key> = self
            .opening
            .iter()
            .copied()
            .filter(|k| {
                self.conns.get(k).is_some_and(|c| {
                    let wait = match c.state {
                        State::Answered { .. } => WAIT_FOR_DATA,
                        _ => WAIT_FOR_SERVER,
                    };
                    now.saturating_duration_since(c.since) >= wait
                })
            })
            .collect();
        for key in due {
            match self.conns.get(&key).map(|c| &c.state) {
                Some(State::Answered { .. }) => {
                    self.counts.waited += 1;
                    self.open(fwd, key, None, now);
                }
                Some(_) => {
                    if let Some(c) = self.conns.get(&key) {
                        let reset = reset_to_client(key, c);
                        self.actions.push(Action::Send(reset));
                    }
                    let held = self.forget(key);
                    self.fail(held);
                }
                None => {}
            }
        }
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let mut expired = 0;
        self.conns.retain(|_, c| match c.state {
            State::Joined(Joined {
                closed: Some(at), ..
            }) => now.saturating_duration_since(at) < LINGER,
            State::Joined(_) => {
                let keep = now.saturating_duration_since(c.since) < IDLE;
                expired += u64::from(!keep);
                keep
            }
            _ => true,
        });
        self.counts.expired += expired;
    }

    /// A content rule's new connection: answer its SYN and hold it.
    fn answer(
        &mut self,
        fwd: &mut Forwarder,
        key: Key,
        (id, mss): (Option<u32>, u16),
        buf: &[u8],
        p: &Parsed,
        now: Instant,
    ) -> Step {
        let full = self.opening.len() >= MAX_OPENING || self.conns.len() >= MAX_JOINED;
        let (Some(id), false) = (id, full) else {
            self.counts.full += 1;
            return Step::Forward(fwd.content(key.server.port(), &[]));
        };
        let Some(t) = p.tcp() else {
            return Step::Pass;
        };
        let mut syn = buf.to_vec();
        let edits = [
            TcpEdit::BlankOptions(UNOFFERED),
            TcpEdit::ClearFlags(tcp::ECE | tcp::CWR),
        ];
        let Ok(stripped) = wire::edit_tcp(&mut syn, p, &edits) else {
            return Step::Pass;
        };
        // AccECN's bit too: the engine's SYN-ACK offers no ECN.
        let _ = wire::set_tcp_reserved(
            &mut syn,
            &stripped,
            stripped.tcp().map_or(0, |t| t.reserved & !1),
        );
        let offered = wire::tcp_mss(buf, p).unwrap_or(DEFAULT_MSS).min(mss);
        let conn = Conn {
            client_isn: t.seq,
            isn: next_isn(&mut self.isn),
            mss: offered,
            since: now,
            state: State::Answered {
                syn: Held { id, bytes: syn },
                ack: None,
            },
        };
        self.actions.push(Action::Send(syn_ack(key, &conn)));
        self.conns.insert(key, conn);
        self.opening.push(key);
        self.counts.answered += 1;
        Step::Hold
    }

    /// A packet of a connection the engine answered: hold its ACK, read its first data.
    fn answered(
        &mut self,
        fwd: &mut Forwarder,
        key: Key,
        id: Option<u32>,
        buf: &[u8],
        p: &Parsed,
        now: Instant,
    ) -> Step {
        let (Some(t), Some(conn)) = (p.tcp(), self.conns.get_mut(&key)) else {
            return Step::Pass;
        };
        let State::Answered { ack, .. } = &mut conn.state else {
            return Step::Pass;
        };
        let next = conn.client_isn.wrapping_add(1);
        let acks_ours = t.flags & tcp::ACK != 0 && t.ack == conn.isn.wrapping_add(1);
        if t.flags & tcp::RST != 0 {
            let held = self.forget(key);
            self.abandon(held);
            return Step::Drop(Reason::SpliceWaiting);
        }
        if t.flags & tcp::SYN != 0 {
            // Our SYN-ACK was lost: send it again.
            let again = syn_ack(key, conn);
            self.actions.push(Action::Send(again));
            return Step::Drop(Reason::SpliceWaiting);
        }
        let (Some(id), true, true) = (id, acks_ours, t.seq == next) else {
            return Step::Drop(Reason::SpliceWaiting);
        };
        let first = p.payload_len > 0 || t.flags & tcp::FIN != 0;
        if !first {
            if ack.is_some() {
                return Step::Drop(Reason::SpliceWaiting);
            }
            *ack = Some(Held {
                id,
                bytes: buf.to_vec(),
            });
            return Step::Hold;
        }
        self.counts.examined += 1;
        let data = Held {
            id,
            bytes: buf.to_vec(),
        };
        self.open(fwd, key, Some((data, p.payload(buf))), now);
        Step::Hold
    }

    /// Choose the port by the first data (None: none came) and release the SYN to it.
    fn open(&mut self, fwd: &mut Forwarder, key: Key, data: Option<(Held, &[u8])>, now: Instant) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let payload = data.as_ref().map_or(&[][..], |(_, p)| p);
        let mark = fwd.content(key.server.port(), payload);
        let State::Answered { syn, ack } =
            std::mem::replace(&mut conn.state, State::Opening(Vec::new()))
        else {
            return;
        };
        conn.since = now;
        // The data carries the same acknowledgement: the pure ACK it supersedes goes, so
        // a connection keeps at most two packets in the queue.
        let (held, superseded) = match data {
            Some((h, _)) => (vec![h], ack),
            None => (ack.into_iter().collect(), None),
        };
        conn.state = State::Opening(held);
        self.actions.push(Action::Release {
            id: syn.id,
            verdict: whole(syn.bytes).map(|b| (b, mark)),
        });
        self.drop_held(superseded.into_iter().collect(), Reason::SpliceWaiting);
    }

    /// Release a held packet with its acknowledgement moved by `delta`.
    fn release_moved(&mut self, mut h: Held, delta: u32) {
        let moved = wire::parse(&h.bytes).ok().and_then(|p| {
            let ack = p.tcp()?.ack.wrapping_add(delta);
            wire::edit_tcp(&mut h.bytes, &p, &[TcpEdit::Ack(ack)]).ok()
        });
        let verdict = match moved {
            Some(_) => whole(h.bytes).map(|b| (b, None)),
            None => Err(Reason::SpliceFailed),
        };
        self.actions.push(Action::Release { id: h.id, verdict });
    }

    /// Remove a connection; the packets it held.
    fn forget(&mut self, key: Key) -> Vec<Held> {
        self.opening.retain(|k| *k != key);
        match self.conns.remove(&key).map(|c| c.state) {
            Some(State::Answered { syn, ack }) => std::iter::once(syn).chain(ack).collect(),
            Some(State::Opening(held)) => held,
            _ => Vec::new(),
        }
    }

    fn abandon(&mut self, held: Vec<Held>) {
        self.counts.abandoned += 1;
        self.drop_held(held, Reason::SpliceWaiting);
    }

    fn fail(&mut self, held: Vec<Held>) {
        self.counts.failed += 1;
        self.drop_held(held, Reason::SpliceFailed);
    }

    fn drop_held(&mut self, held: Vec<Held>, why: Reason) {
        for h in held {
            self.actions.push(Action::Release {
                id: h.id,
                verdict: Err(why),
            });
        }
    }
}

/// A held packet with its checksums computed whole: it may have come with them left to
/// offload (a partial sum the edits only moved), and the kernel takes a rewritten
/// packet's checksums as they are.
fn whole(mut bytes: Vec<u8>) -> Result<Vec<u8>, Reason> {
    wire::parse(&bytes)
        .and_then(|p| wire::fill_checksums(&mut bytes, &p))
        .map_err(Reason::Malformed)?;
    Ok(bytes)
}

/// Apply `edits` to the packet: Edited, or a drop if it would not take them.
fn edited(buf: &mut [u8], p: &Parsed, edits: &[TcpEdit]) -> Step {
    match wire::edit_tcp(buf, p, edits) {
        Ok(_) => Step::Edited,
        Err(e) => Step::Drop(Reason::Malformed(e)),
    }
}

/// The engine's SYN-ACK for `conn`, in the server's name.
fn syn_ack(key: Key, conn: &Conn) -> Vec<u8> {
    let (server, client) = (key.server, key.client);
    Builder::tcp(server.ip(), client.ip(), server.port(), client.port())
        .seq(conn.isn)
        .ack(conn.client_isn.wrapping_add(1))
        .flags(tcp::SYN | tcp::ACK)
        .window(WINDOW)
        .mss(conn.mss)
        .build()
}

/// A reset to the client of a connection the server never took.
fn reset_to_client(key: Key, conn: &Conn) -> Vec<u8> {
    let (server, client) = (key.server, key.client);
    Builder::tcp(server.ip(), client.ip(), server.port(), client.port())
        .seq(conn.isn.wrapping_add(1))
        .ack(conn.client_isn.wrapping_add(1))
        .flags(tcp::RST | tcp::ACK)
        .window(0)
        .build()
}

/// The next initial sequence number.
fn next_isn(state: &mut u64) -> u32 {
    // The low half of a draw: truncation is the point.
    splitmix64(state) as u32
}
