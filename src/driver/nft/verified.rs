//! The engine's handle on the channel for unverified senders: it adds a sender to the
//! verified set of its family when a capability first comes back from it, deletes it when
//! it forgets the sender, and reads the counters of what the channel's limits dropped.
//!
//! Invariants: one change is one netlink message, so an error names its address; a batch
//! holds at most `BATCH_MAX` changes (one sendmsg each, well under the socket's send
//! buffer), and changes apply in the order given. Adding a present address is a no-op
//! (no NLM_F_EXCL); deleting an absent one fails in the kernel with ENOENT, and such
//! deletes are taken out and the rest of the batch sent again (a refused batch changes
//! nothing), so neither fails `apply`. Everything acts in the network namespace the
//! socket was opened in.

use std::io;
use std::net::IpAddr;

use super::RulesError;
use super::nl::{DataMsg, NlSocket, Reply, all_acked};
use super::plan::{COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL, TABLE, verified_set};
use crate::driver::netlink::{self, Attrs, MsgWriter, NLM_F_ACK, NLM_F_CREATE};

/// Changes per batch: about 90 bytes each (IPv6), so a batch stays near 90 KB.
const BATCH_MAX: usize = 1000;

/// Sends of one batch at most: the first, and again without the deletes that failed.
const TRIES: usize = 3;

/// From linux/netfilter/nf_tables.h and nfnetlink.h (libc lacks the attributes).
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

/// The engine's socket for the verified sets (`verified_v4`, `verified_v6`) of table
/// `mpolice`, in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct VerifiedSet {
    sock: NlSocket,
    seq: u32,
}

impl VerifiedSet {
    /// Open a netlink socket for table `mpolice`'s verified sets. Nothing is checked yet:
    /// `apply` fails (adding) while the sets are not installed.
    pub fn open() -> Result<Self, RulesError> {
        Ok(VerifiedSet {
            sock: NlSocket::open().map_err(RulesError::Socket)?,
            seq: 1,
        })
    }

    /// Add (true) or delete (false) each address in its family's verified set, in order,
    /// in as few batches as fit. Adding a present address and deleting an absent one
    /// succeed and change nothing; deleting from sets that do not exist (the channel not
    /// installed) does too. Any other refusal (a full set, a missing set when adding) is
    /// an error naming the address; the batch it was in then changed nothing, earlier
    /// batches stay applied.
    pub fn apply(&mut self, changes: &[(IpAddr, bool)]) -> Result<(), RulesError> {
        for chunk in changes.chunks(BATCH_MAX) {
            self.apply_batch(chunk)?;
        }
        Ok(())
    }

    /// Send one batch, again without the deletes of absent addresses if there were any.
    fn apply_batch(&mut self, changes: &[(IpAddr, bool)]) -> Result<(), RulesError> {
        let mut pending: Vec<(IpAddr, bool)> = changes.to_vec();
        for _ in 0..TRIES {
            if pending.is_empty() {
                return Ok(());
            }
            let first = self.take_seqs(pending.len() + 2);
            let batch = element_batch(TABLE, first, &pending);
            // Messages are first+1 ..= first+len; the batch begin and end ask for no ack.
            let expect = first + 1..first + 1 + pending.len() as u32;
            let (replies, _) = self
                .sock
                .talk(&[&batch], expect.clone())
                .map_err(RulesError::Socket)?;
            let errors: Vec<(usize, i32)> = replies
                .iter()
                .filter_map(|r| match *r {
                    Reply::Ack { seq, errno } if errno != 0 => {
                        Some(((seq - expect.start) as usize, errno))
                    }
                    _ => None,
                })
                .collect();
            if errors.is_empty() {
                if !all_acked(&replies, &expect) {
                    return Err(RulesError::Kernel {
                        step: "reading acks of verified set changes".to_owned(),
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the kernel did not acknowledge every change",
                        ),
                    });
                }
                return Ok(());
            }
            // Deletes of absent addresses are no-ops to us; anything else is reported.
            if let Some(&(i, errno)) = errors
                .iter()
                .find(|&&(i, errno)| errno != libc::ENOENT || pending.get(i).is_none_or(|c| c.1))
            {
                let step = match pending.get(i) {
                    Some(&(ip, add)) => format!(
                        "{} {ip} {} set {}",
                        if add { "add" } else { "delete" },
                        if add { "to" } else { "from" },
                        verified_set(ip.is_ipv4())
                    ),
                    None => "verified set batch".to_owned(),
                };
                return Err(kernel_error(step, errno));
            }
            let mut absent = vec![false; pending.len()];
            for &(i, _) in &errors {
                absent[i] = true;
            }
            pending = pending
                .into_iter()
                .zip(absent)
                .filter_map(|(c, gone)| (!gone).then_some(c))
                .collect();
        }
        Err(RulesError::Kernel {
            step: "verified set changes".to_owned(),
            source: io::Error::other(format!(
                "deletes kept failing with ENOENT after {TRIES} tries"
            )),
        })
    }

    /// Reserve `n` sequence numbers and return the first.
    fn take_seqs(&mut self, n: usize) -> u32 {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if self.seq.checked_add(n).is_none() {
            self.seq = 1;
        }
        let first = self.seq;
        self.seq += n;
        first
    }
}

/// Map a kernel errno to our error, with the step it answered.
fn kernel_error(step: String, errno: i32) -> RulesError {
    if errno == libc::EPERM {
        return RulesError::PermissionDenied;
    }
    RulesError::Kernel {
        step,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// Return the nfnetlink message type of an nf_tables message.
fn nft_type(msg: libc::c_int) -> u16 {
    ((libc::NFNL_SUBSYS_NFTABLES as u16) << 8) | msg as u16
}

/// nfgenmsg: family, version, resource id (big endian).
fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let id = res_id.to_be_bytes();
    [family, libc::NFNETLINK_V0 as u8, id[0], id[1]]
}

/// A NUL-terminated attribute payload.
fn c_str(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Build the batch: begin at seq `first`, one message per change from `first + 1`, end.
fn element_batch(table: &str, first: u32, changes: &[(IpAddr, bool)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(96 * (changes.len() + 2));
    let frame = |buf: &mut Vec<u8>, kind: u16, seq: u32| {
        MsgWriter::new(buf, kind, 0, seq)
            .bytes(&nfgenmsg(
                libc::AF_UNSPEC as u8,
                libc::NFNL_SUBSYS_NFTABLES as u16,
            ))
            .finish();
    };
    frame(&mut buf, NFNL_MSG_BATCH_BEGIN, first);
    for (seq, &(ip, add)) in (first + 1..).zip(changes) {
        let key = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut data = Vec::new();
        netlink::push_attr(&mut data, NFTA_DATA_VALUE, &key);
        let mut elem = Vec::new();
        netlink::push_attr(&mut elem, NFTA_SET_ELEM_KEY | NLA_F_NESTED, &data);
        let mut list = Vec::new();
        netlink::push_attr(&mut list, NFTA_LIST_ELEM | NLA_F_NESTED, &elem);
        // Without NLM_F_EXCL adding an element that is there already succeeds.
        let (kind, flags) = if add {
            (libc::NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_ACK)
        } else {
            (libc::NFT_MSG_DELSETELEM, NLM_F_ACK)
        };
        MsgWriter::new(&mut buf, nft_type(kind), flags, seq)
            .bytes(&nfgenmsg(libc::NFPROTO_INET as u8, 0))
            .attr(NFTA_SET_ELEM_LIST_TABLE, &c_str(table))
            .attr(NFTA_SET_ELEM_LIST_SET, &c_str(verified_set(ip.is_ipv4())))
            .attr(NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list)
            .finish();
    }
    let end = first + 1 + changes.len() as u32;
    frame(&mut buf, NFNL_MSG_BATCH_END, end);
    buf
}

/// Return the packets the channel dropped so far in table `mpolice` of the calling
/// thread's network namespace: (over a source's own rate, over the total rate), read from
/// the named counters `unverified_over_source` and `unverified_over_total`. Both are 0
/// when the channel (or the table) is not installed.
pub fn unverified_drops() -> Result<(u64, u64), RulesError> {
    let sock = NlSocket::open().map_err(RulesError::Socket)?;
    let mut out = [0u64; 2];
    for (n, (slot, name)) in out
        .iter_mut()
        .zip([COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL])
        .enumerate()
    {
        let seq = n as u32 + 1;
        let mut req = Vec::new();
        MsgWriter::new(&mut req, nft_type(libc::NFT_MSG_GETOBJ), NLM_F_ACK, seq)
            .bytes(&nfgenmsg(libc::NFPROTO_INET as u8, 0))
            .attr(NFTA_OBJ_TABLE, &c_str(TABLE))
            .attr(NFTA_OBJ_NAME, &c_str(name))
            .attr(
                NFTA_OBJ_TYPE,
                &super::expr::NFT_OBJECT_COUNTER.to_be_bytes(),
            )
            .finish();
        let (replies, data) = sock
            .talk(&[&req], seq..seq + 1)
            .map_err(RulesError::Socket)?;
        for r in &replies {
            match *r {
                Reply::Ack { errno, .. } if errno == libc::ENOENT => {}
                Reply::Ack { errno, .. } if errno != 0 => {
                    return Err(kernel_error(format!("get counter {name}"), errno));
                }
                _ => {}
            }
        }
        if let Some(packets) = data.iter().find_map(counter_packets) {
            *slot = packets;
        }
    }
    Ok((out[0], out[1]))
}

/// Return the packet count of a NEWOBJ message carrying a counter.
fn counter_packets(msg: &DataMsg) -> Option<u64> {
    if msg.kind != nft_type(libc::NFT_MSG_NEWOBJ) {
        return None;
    }
    let body = &msg.body;
    // After nfgenmsg: the object's attributes; NFTA_OBJ_DATA nests the counter's.
    let (_, data) = Attrs::new(body, 4..body.len()).find(|(t, _)| *t == NFTA_OBJ_DATA)?;
    let (_, packets) = Attrs::new(body, data).find(|(t, _)| *t == NFTA_COUNTER_PACKETS)?;
    Some(u64::from_be_bytes(
        body.get(packets)?.get(..8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_layout() {
        let changes = [
            ("198.18.1.7".parse().unwrap(), true),
            ("2001:2::9".parse().unwrap(), false),
        ];
        let buf = element_batch("mpolice", 10, &changes);
        let msgs: Vec<_> = netlink::messages(&buf).collect();
        let kinds: Vec<(u16, u16, u32)> =
            msgs.iter().map(|m| (m.msg_type, m.flags, m.seq)).collect();
        let req = netlink::NLM_F_REQUEST;
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, req, 10),
                (nft_type(libc::NFT_MSG_NEWSETELEM), req | 0x400 | 0x4, 11),
                (nft_type(libc::NFT_MSG_DELSETELEM), req | 0x4, 12),
                (NFNL_MSG_BATCH_END, req, 13),
            ]
        );
        // The begin message names the nf_tables subsystem.
        assert_eq!(buf[msgs[0].body.clone()], [0, 0, 0, 10]);
        let body = &buf[msgs[2].body.clone()];
        let attrs: Vec<(u16, Vec<u8>)> = Attrs::new(body, 4..body.len())
            .map(|(t, r)| (t, body[r].to_vec()))
            .collect();
        assert_eq!(attrs[0], (NFTA_SET_ELEM_LIST_TABLE, b"mpolice\0".to_vec()));
        assert_eq!(
            attrs[1],
            (NFTA_SET_ELEM_LIST_SET, b"verified_v6\0".to_vec())
        );
        // elements > elem > key > value: the address, nested three deep.
        let key: [u8; 16] = "2001:2::9".parse::<std::net::Ipv6Addr>().unwrap().octets();
        assert!(attrs[2].1.ends_with(&key), "{:?}", attrs[2]);
        assert_eq!(attrs[2].1.len(), 4 + 4 + 4 + 16);
    }

    #[test]
    fn reads_counter_packets() {
        let mut counter = Vec::new();
        netlink::push_attr(&mut counter, 1, &77u64.to_be_bytes());
        netlink::push_attr(&mut counter, NFTA_COUNTER_PACKETS, &12345u64.to_be_bytes());
        let mut body = nfgenmsg(libc::NFPROTO_INET as u8, 0).to_vec();
        netlink::push_attr(&mut body, NFTA_OBJ_TABLE, b"mpolice\0");
        netlink::push_attr(&mut body, NFTA_OBJ_DATA | NLA_F_NESTED, &counter);
        let msg = DataMsg {
            seq: 1,
            kind: nft_type(libc::NFT_MSG_NEWOBJ),
            body,
        };
        assert_eq!(counter_packets(&msg), Some(12345));
        let other = DataMsg {
            kind: nft_type(libc::NFT_MSG_NEWTABLE),
            ..msg.clone()
        };
        assert_eq!(counter_packets(&other), None);
        let short = DataMsg {
            body: msg.body[..msg.body.len() - 4].to_vec(),
            ..msg
        };
        assert_eq!(counter_packets(&short), None);
    }
}
