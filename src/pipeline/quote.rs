//! mbox: an ICMP error from beyond the mbox (a router expiring TTL, a link too small)
//! quotes the packet at fault, and a stamped packet carries its capability at the end:
//! the client must get the quote of the packet it sent, never the capability.
//!
//! Invariant: a quote of a stamped packet leaves with no capability byte and no marker;
//! its length field is the client's again, and so is every byte when it was quoted whole.

use super::{Edit, Reason, clear_marker};
use crate::capability::{Marker, wire_len};
use crate::stats::CapCounters;
use crate::wire::{self, Parsed, icmp};

/// Scrub the capability out of the quote of an ICMP error; None if `p` is no ICMP error
/// quoting TCP (not this stage's packet).
pub fn scrub(buf: &mut Vec<u8>, p: &Parsed, c: &mut CapCounters) -> Option<Result<Edit, Reason>> {
    let q = icmp::quoted_tcp(buf, p)?;
    let reserved = buf.get(q.tcp_reserved()).copied()? & 0x0F;
    if Marker::from_reserved(reserved) != Ok(Marker::Stamped) {
        return Some(Ok(Edit::Unchanged));
    }
    let sent_len = q.total_len.saturating_sub(wire_len(q.v6));
    let quoted = buf.get(q.ip..)?;
    let fixed = if quoted.len() >= q.total_len {
        // Quoted whole: undo the stamp the way the victim does, byte for byte.
        unstamp(&quoted[..q.total_len], q.v6)
    } else {
        // Cut short: keep what the client sent of it, no marker.
        let mut part = quoted[..quoted.len().min(sent_len)].to_vec();
        let at = q.tcp_reserved() - q.ip;
        if let Some(b) = part.get_mut(at) {
            *b = Marker::None.apply(*b & 0x0F) | (*b & 0xF0);
        }
        Ok(part)
    };
    let edit = fixed.and_then(|part| {
        wire::icmp::set_quote(buf, &q, &part, sent_len).map_err(Reason::Malformed)
    });
    c.quotes_scrubbed += 1;
    Some(edit.map(|_| Edit::Changed))
}

/// The packet a whole quoted stamped packet was before the mbox stamped it.
fn unstamp(stamped: &[u8], v6: bool) -> Result<Vec<u8>, Reason> {
    let mut pkt = stamped.to_vec();
    let p = wire::parse(&pkt).map_err(Reason::Malformed)?;
    let p = wire::strip_trailer(&mut pkt, &p, wire_len(v6)).map_err(Reason::Malformed)?;
    clear_marker(&mut pkt, &p)?;
    Ok(pkt)
}
