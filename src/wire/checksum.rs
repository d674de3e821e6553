//! Internet checksum (RFC 1071) and incremental updates (RFC 1624).
//!
//! A "partial sum" is an unfolded `u64` accumulator of 16-bit big-endian
//! words. Partial sums add with plain `+` (the ones' complement sum is
//! arithmetic modulo 0xFFFF and 2^16 ≡ 1, so carries fold in later).
//! [`fold`] reduces a partial sum to 16 bits; the checksum field holds its
//! complement ([`finish`]).

/// Return the partial sum of `data` as if it starts at an even offset.
///
/// An odd trailing byte is padded with a zero low byte.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    // 32-bit words into a u64 cannot overflow below 16 GiB of input.
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut pairs = rest.chunks_exact(2);
    for w in &mut pairs {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let Some(&last) = pairs.remainder().first() {
        acc += u64::from(last) << 8;
    }
    acc
}

/// Return the partial sum of `data` placed at byte `offset` of the covered range.
///
/// At an odd offset every byte lands in the other half of its word, which
/// byte-swaps the folded sum (RFC 1071 byte-order independence).
#[inline]
pub fn sum_at(data: &[u8], offset: usize) -> u64 {
    if offset % 2 == 0 {
        sum(data)
    } else {
        u64::from(fold(sum(data)).swap_bytes())
    }
}

/// Fold a partial sum to 16 bits with end-around carry (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u16
}

/// Return the checksum field value for a partial sum (complement of [`fold`]).
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Return the Internet checksum of `data` (e.g. an IPv4 header with its checksum field zeroed).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data))
}

/// Return the partial sum of the IPv4 pseudo-header.
#[inline]
pub fn pseudo_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(proto)
        + u64::from(len)
}

/// Return the partial sum of the IPv6 pseudo-header (RFC 8200 section 8.1).
#[inline]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], proto: u8, len: u32) -> u64 {
    sum(src) + sum(dst) + u64::from(proto) + u64::from(len)
}

/// Update checksum field `check` for words summing to `removed` replaced by words summing to `added`.
///
/// RFC 1624 eqn 3: HC' = ~(~HC + ~m + m'), with m and m' partial sums.
#[inline]
pub fn adjust(check: u16, removed: u64, added: u64) -> u16 {
    let acc = u64::from(!check) + u64::from(!fold(removed)) + added;
    !fold(acc)
}

/// Update checksum field `check` for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    adjust(check, u64::from(old), u64::from(new))
}

/// Update checksum field `check` for an even-aligned byte range changing from `old` to `new`.
#[inline]
pub fn update_bytes(check: u16, old: &[u8], new: &[u8]) -> u16 {
    adjust(check, sum(old), sum(new))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IPv4 header of a TCP SYN, 10.0.0.1 -> 10.0.0.2, with its checksum 0x0a74 at bytes 10..12.
    const IPV4_SYN_HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x0a, 0x74, 0x0a, 0x00, 0x00,
        0x01, 0x0a, 0x00, 0x00, 0x02,
    ];

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_low_byte() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(sum(&[0xff])), 0xff00);
        assert_eq!(sum(&[]), 0);
    }

    #[test]
    fn every_chunk_path_agrees_with_naive() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1001).collect();
        for len in 0..data.len() {
            let d = &data[..len];
            let mut naive: u64 = 0;
            for (i, b) in d.iter().enumerate() {
                naive += if i % 2 == 0 {
                    u64::from(*b) << 8
                } else {
                    u64::from(*b)
                };
            }
            assert_eq!(fold(sum(d)), fold(naive), "len {len}");
        }
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // Hand-computed: 4500+003c+1c46+4000+4006+0a00+0001+0a00+0002 = 0xf58b -> ~ = 0x0a74.
        let mut h = IPV4_SYN_HDR;
        assert_eq!(fold(sum(&h)), 0xffff, "header verifies");
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0x0a74);
    }

    #[test]
    fn known_tcp_syn_checksum() {
        // TCP SYN 10.0.0.1:40000 -> 10.0.0.2:80, seq 1, MSS 1460, window 64240.
        // Hand-computed over pseudo-header (0a00 0001 0a00 0002 0006 0018) and
        // header: 9c40 0050 0000 0001 0000 0000 6002 faf0 0000 0000 0204 05b4.
        let mut tcp = [
            0x9c, 0x40, 0x00, 0x50, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02,
            0xfa, 0xf0, 0x00, 0x00, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
        ];
        let ph = pseudo_v4([10, 0, 0, 1], [10, 0, 0, 2], 6, 24);
        // Pseudo: 0a00+0001+0a00+0002+0006+0018 = 0x1421.
        // TCP: 9c40+0050+0001+6002+faf0+0204+05b4 = 0x1_ff3b -> 0xff3c.
        // Total 0x1421 + 0xff3c = 0x1_135d -> 0x135e -> checksum 0xeca1.
        let c = finish(ph + sum(&tcp));
        assert_eq!(c, 0xeca1);
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(ph + sum(&tcp)), 0xffff);
    }

    #[test]
    fn pseudo_v6_matches_byte_layout() {
        let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src);
        bytes.extend_from_slice(&dst);
        bytes.extend_from_slice(&70000u32.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 17]);
        assert_eq!(fold(pseudo_v6(&src, &dst, 17, 70000)), fold(sum(&bytes)));
    }

    #[test]
    fn incremental_matches_full() {
        let mut h = IPV4_SYN_HDR;
        let old = u16::from_be_bytes([h[2], h[3]]);
        let check = u16::from_be_bytes([h[10], h[11]]);
        h[2..4].copy_from_slice(&0x05dcu16.to_be_bytes());
        let inc = update_u16(check, old, 0x05dc);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));

        let mut h = IPV4_SYN_HDR;
        let check = u16::from_be_bytes([h[10], h[11]]);
        let inc = update_bytes(check, &h[12..16], &[192, 168, 77, 3]);
        h[12..16].copy_from_slice(&[192, 168, 77, 3]);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));
    }

    #[test]
    fn sum_at_odd_offset() {
        let data = [1u8, 2, 3, 4, 5, 6, 7];
        for split in 0..data.len() {
            let (a, b) = data.split_at(split);
            assert_eq!(fold(sum(a) + sum_at(b, split)), fold(sum(&data)));
        }
    }

    #[test]
    fn no_change_keeps_checksum() {
        for check in [0u16, 1, 0x1234, 0xfffe] {
            assert_eq!(update_u16(check, 0xabcd, 0xabcd), check);
        }
    }
}
