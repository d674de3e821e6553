//! pcap files that tcpdump, tshark and Wireshark read: the traced packets as the engine
//! received them and as its verdict returned them. Raw IP (LINKTYPE_RAW), so IPv4 and
//! IPv6 share one file, with nanosecond timestamps.

use std::io::{self, Write};

/// The magic number of a pcap file with nanosecond timestamps.
pub const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// The magic number of a pcap file with microsecond timestamps (tcpdump's default).
pub const MAGIC_US: u32 = 0xa1b2_c3d4;
/// LINKTYPE_RAW: each record is an IP packet, version from its first nibble.
pub const LINKTYPE_RAW: u32 = 101;
/// The most bytes of a packet a record holds (the kernel's largest packet).
pub const MAX_SNAP: u32 = 65_535;

/// Write the file header (version 2.4, nanosecond timestamps).
pub fn write_header(out: &mut impl Write, snaplen: u32) -> io::Result<()> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&MAGIC_NS.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    h.extend_from_slice(&0u32.to_le_bytes()); // accuracy
    h.extend_from_slice(&snaplen.to_le_bytes());
    h.extend_from_slice(&LINKTYPE_RAW.to_le_bytes());
    out.write_all(&h)
}

/// Write one record: `data` (at most the snap length) of a packet of `orig_len` bytes,
/// at `unix_ns`.
pub fn write_record(
    out: &mut impl Write,
    unix_ns: u64,
    data: &[u8],
    orig_len: u32,
) -> io::Result<()> {
    let mut h = Vec::with_capacity(16);
    let secs = u32::try_from(unix_ns / 1_000_000_000).unwrap_or(u32::MAX);
    h.extend_from_slice(&secs.to_le_bytes());
    h.extend_from_slice(&((unix_ns % 1_000_000_000) as u32).to_le_bytes());
    h.extend_from_slice(&(data.len() as u32).to_le_bytes());
    h.extend_from_slice(&orig_len.max(data.len() as u32).to_le_bytes());
    out.write_all(&h)?;
    out.write_all(data)
}

/// Link types whose records this reader finds the IP packet in.
const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_IPV4: u32 = 228;
const LINKTYPE_IPV6: u32 = 229;
const LINKTYPE_LINUX_SLL2: u32 = 276;

/// One captured packet: its time, its IP bytes as captured, and its length on the wire
/// (IP packet; more than `ip.len()` when the capture was cut at the snap length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub unix_ns: u64,
    pub ip: Vec<u8>,
    pub ip_len: u32,
}

/// A pcap file read whole: its IP packets, and what could not be read.
#[derive(Debug, Default)]
pub struct Capture {
    pub packets: Vec<Captured>,
    /// Records that are not IP (ARP, say), skipped.
    pub not_ip: u64,
    /// The file ended inside a record (a capture still being written, or cut).
    pub cut_short: bool,
}

/// Read a pcap file (microsecond or nanosecond, either byte order) of raw IP, Ethernet
/// or Linux cooked captures (tcpdump `-i any`). Anything else is a clear error.
pub fn read(bytes: &[u8]) -> Result<Capture, String> {
    let header = bytes
        .get(..24)
        .ok_or("not a pcap file: shorter than a pcap header")?;
    let magic_le = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let (le, nanos) = match (magic_le, magic_le.swap_bytes()) {
        (MAGIC_US, _) => (true, false),
        (MAGIC_NS, _) => (true, true),
        (_, MAGIC_US) => (false, false),
        (_, MAGIC_NS) => (false, true),
        _ if header.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) => {
            return Err("a pcapng file: write pcap (tcpdump -w does; tshark -F pcap)".into());
        }
        _ => return Err("not a pcap file: unknown magic number".into()),
    };
    let word = |b: &[u8], at: usize| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = word(header, 20) & 0xffff;
    if ![
        LINKTYPE_RAW,
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
    ]
    .contains(&link)
    {
        return Err(format!(
            "link type {link} is not one this reader takes (raw IP, Ethernet, Linux cooked)"
        ));
    }
    let mut c = Capture::default();
    let mut at = 24;
    while at < bytes.len() {
        let Some(rec) = bytes.get(at..at + 16) else {
            c.cut_short = true;
            break;
        };
        let (secs, frac, incl, orig) = (word(rec, 0), word(rec, 4), word(rec, 8), word(rec, 12));
        let Some(data) = bytes.get(at + 16..(at + 16).saturating_add(incl as usize)) else {
            c.cut_short = true;
            break;
        };
        at += 16 + incl as usize;
        let sub = if nanos {
            frac
        } else {
            frac.saturating_mul(1000)
        };
        let unix_ns = u64::from(secs) * 1_000_000_000 + u64::from(sub);
        match ip_of(link, data) {
            Some(skip) => c.packets.push(Captured {
                unix_ns,
                ip: data[skip..].to_vec(),
                ip_len: orig.saturating_sub(skip as u32),
            }),
            None => c.not_ip += 1,
        }
    }
    Ok(c)
}

/// Where the IP packet starts in a record of `link`, if it holds one.
fn ip_of(link: u32, data: &[u8]) -> Option<usize> {
    let (at, ethertype) = match link {
        LINKTYPE_RAW | LINKTYPE_IPV4 | LINKTYPE_IPV6 => return Some(0),
        LINKTYPE_ETHERNET => {
            // One 802.1Q tag at most.
            let t = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
            if t == 0x8100 {
                (18, u16::from_be_bytes([*data.get(16)?, *data.get(17)?]))
            } else {
                (14, t)
            }
        }
        LINKTYPE_LINUX_SLL => (16, u16::from_be_bytes([*data.get(14)?, *data.get(15)?])),
        LINKTYPE_LINUX_SLL2 => (20, u16::from_be_bytes([*data.first()?, *data.get(1)?])),
        _ => return None,
    };
    (matches!(ethertype, 0x0800 | 0x86dd) && data.len() > at).then_some(at)
}
