//! Property tests: the trace readers (`trace format`, the pcap reader and `trace
//! compare`) never panic on what they are handed.

use proptest::prelude::*;

use super::{Output, compare, format, pcap};

const HEADER: &str = "{\"mpolice_trace\":1,\"role\":\"mbox\",\"started_unix_ns\":0}\n";
/// A trace with the kernel's events: `format` joins them to the packets.
const HEADER_KERNEL: &str =
    "{\"mpolice_trace\":1,\"role\":\"mbox\",\"started_unix_ns\":0,\"kernel\":true}\n";
const PACKET: &str = "{\"n\":1,\"queue\":0,\"id\":1,\"hook\":2,\"len_in\":60,\"len_out\":60,\
    \"verdict\":\"accept\",\"head\":{\"proto\":6,\"src\":\"198.18.1.2\",\
    \"dst\":\"198.18.2.2\",\"sport\":1,\"dport\":2,\"flags\":2,\"seq\":3,\
    \"ack\":4,\"ip_id\":5},\"marks\":[[\"packet\",\"B\",10],[\"parse\",\"E\",5],\
    [\"packet\",\"E\",1]],\"lost_marks\":0}\n";
const KERNEL: &str = "{\"kernel\":{\"t_ns\":9,\"id\":7,\"family\":\"ip\",\"table\":\"t\",\
    \"chain\":\"c\",\"kind\":\"rule\",\"verdict\":\"queue 0\",\"head\":{\"proto\":6,\
    \"src\":\"198.18.1.2\",\"dst\":\"198.18.2.2\",\"sport\":1,\"dport\":2,\"flags\":2,\
    \"seq\":1,\"ack\":4,\"ip_id\":5},\"payload\":4000000000}}\n";

/// `line` with the byte at `at` changed to `b`.
fn changed(line: &str, at: usize, b: u8) -> Vec<u8> {
    let mut l = line.as_bytes().to_vec();
    let at = at % l.len();
    l[at] = b;
    l
}

/// A real trace line with one byte changed, or random text after a good header.
fn trace_bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| changed(PACKET, at, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| [
            PACKET.as_bytes(),
            &changed(KERNEL, at, b),
            PACKET.as_bytes()
        ]
        .concat()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

proptest! {
    #[test]
    fn format_never_panics(body in trace_bodies(), json in any::<bool>()) {
        let input = [HEADER.as_bytes(), &body].concat();
        let how = if json { Output::Json } else { Output::Text };
        let _ = format(&input[..], &mut Vec::new(), how);
        let _ = format(&body[..], &mut Vec::new(), how);
        let joined = [HEADER_KERNEL.as_bytes(), &body].concat();
        let _ = format(&joined[..], &mut Vec::new(), how);
    }

    #[test]
    fn the_pcap_reader_never_panics(
        tail in proptest::collection::vec(any::<u8>(), 0..400),
        link in prop_oneof![Just(1u32), Just(101), Just(113), Just(276), any::<u32>()],
        magic in prop_oneof![Just(pcap::MAGIC_US), Just(pcap::MAGIC_NS), any::<u32>()],
        big_endian in any::<bool>(),
    ) {
        let word = |w: u32| if big_endian { w.to_be_bytes() } else { w.to_le_bytes() };
        let mut f = Vec::new();
        for w in [magic, 0x0004_0002, 0, 0, 65535, link] {
            f.extend_from_slice(&word(w));
        }
        f.extend_from_slice(&tail);
        if let Ok(c) = pcap::read(&f) {
            for p in &c.packets {
                prop_assert!(p.ip.len() <= tail.len());
            }
        }
        let _ = pcap::read(&tail);
        // Whatever the capture holds, the comparison reads its headers without a panic.
        let _ = compare(&[], &f, true);
        // So does the kernel trace's decoder, taking the bytes for an event's body.
        let _ = super::kernel::decode(&tail, 0..tail.len(), 0);
    }
}
