//! The expressions nftnl 0.9.4 lacks: the two queue statements, native `queue` and the xt
//! `NFQUEUE` target, the Jenkins `hash` that picks a sender's queue, and for the channel of
//! unverified senders a set lookup by name, a meter update with a per-element limit, and
//! references to named objects (counters, limits).
//!
//! Invariants: both queue statements send the same queue range and flags
//! (NFT_QUEUE_FLAG_* and NFQ_FLAG_* share values); `total` is at least 1 (checked by the
//! caller, the kernel rejects 0). The hash reads and writes register 1; the lookup and the
//! meter read their key from register 1. Limits count packets per second.

use std::ffi::{CString, c_void};
use std::ptr::NonNull;

use nftnl::Rule;
use nftnl::expr::Expression;
use nftnl::nftnl_sys as sys;

/// Bytes of `struct xt_NFQ_info_v3 { u16 queuenum; u16 queues_total; u16 flags; }` as
/// nft_compat wants them: XT_ALIGN(6) = 8 (it compares aligned sizes, iptables sends 8).
const XT_NFQ_INFO_LEN: usize = 8;

/// Revision of the NFQUEUE target whose info carries queues_total and flags.
const XT_NFQ_REVISION: u32 = 3;

/// Native nftables `queue` expression (kernel module nft_queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub num: u16,
    pub total: u16,
    pub flags: u16,
}

impl Expression for Queue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"queue");
        // SAFETY: `expr` is a live queue expression; these attributes are u16 in libnftnl.
        unsafe {
            sys::nftnl_expr_set_u16(expr.as_ptr(), sys::NFTNL_EXPR_QUEUE_NUM as u16, self.num);
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_TOTAL as u16,
                self.total,
            );
            sys::nftnl_expr_set_u16(
                expr.as_ptr(),
                sys::NFTNL_EXPR_QUEUE_FLAGS as u16,
                self.flags,
            );
        }
        expr
    }
}

/// The xt `NFQUEUE` target (revision 3) run through nft_compat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XtNfqueue {
    pub num: u16,
    pub total: u16,
    pub flags: u16,
}

impl XtNfqueue {
    /// Return the target info as the kernel reads it (host byte order, zero padded).
    fn info(&self) -> [u8; XT_NFQ_INFO_LEN] {
        let mut info = [0u8; XT_NFQ_INFO_LEN];
        info[0..2].copy_from_slice(&self.num.to_ne_bytes());
        info[2..4].copy_from_slice(&self.total.to_ne_bytes());
        info[4..6].copy_from_slice(&self.flags.to_ne_bytes());
        info
    }
}

impl Expression for XtNfqueue {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"target");
        let info = self.info();
        // SAFETY: libnftnl takes ownership of the TG_INFO buffer and frees it with free(),
        // so it must come from malloc; it is fully initialised before being handed over.
        unsafe {
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_NAME as u16,
                c"NFQUEUE".as_ptr(),
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_REV as u16,
                XT_NFQ_REVISION,
            );
            let buf = libc::malloc(XT_NFQ_INFO_LEN).cast::<u8>();
            if buf.is_null() {
                // Out of memory: the trait cannot report it, and nftnl aborts likewise.
                std::process::abort();
            }
            std::ptr::copy_nonoverlapping(info.as_ptr(), buf, XT_NFQ_INFO_LEN);
            let rc = sys::nftnl_expr_set(
                expr.as_ptr(),
                sys::NFTNL_EXPR_TG_INFO as u16,
                buf.cast::<c_void>(),
                XT_NFQ_INFO_LEN as u32,
            );
            if rc < 0 {
                // Not taken over by libnftnl, so still ours to free.
                libc::free(buf.cast::<c_void>());
            }
        }
        expr
    }
}

/// `enum nft_hash_types` in linux/netfilter/nf_tables.h: Jenkins hash of a register.
const NFT_HASH_JENKINS: u32 = 0;

/// `jhash(reg 1 [len bytes], seed) mod modulus` into register 1 (nft text: `jhash ip saddr
/// mod 2 seed 0x1`); the kernel scales the hash into `0..modulus` (reciprocal_scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JHash {
    /// Bytes hashed: 4 for an IPv4 address, 16 for IPv6 (one 16-byte register).
    pub len: u32,
    /// At least 1 (the kernel refuses 0).
    pub modulus: u32,
    pub seed: u32,
}

impl Expression for JHash {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"hash");
        let reg = libc::NFT_REG_1 as u32;
        // SAFETY: `expr` is a live hash expression; these attributes are u32 in libnftnl.
        unsafe {
            for (attr, value) in [
                (sys::NFTNL_EXPR_HASH_SREG, reg),
                (sys::NFTNL_EXPR_HASH_DREG, reg),
                (sys::NFTNL_EXPR_HASH_LEN, self.len),
                (sys::NFTNL_EXPR_HASH_MODULUS, self.modulus),
                (sys::NFTNL_EXPR_HASH_SEED, self.seed),
                (sys::NFTNL_EXPR_HASH_OFFSET, 0),
                (sys::NFTNL_EXPR_HASH_TYPE, NFT_HASH_JENKINS),
            ] {
                sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value);
            }
        }
        expr
    }
}

/// `ip saddr @set`: the rule goes on only if register 1 holds an element of the named set
/// (nftnl's own `Lookup` needs the set's nftnl object; this names it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLookup {
    pub set: CString,
}

impl Expression for SetLookup {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"lookup");
        // SAFETY: `expr` is a live lookup expression; libnftnl copies the name.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_LOOKUP_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_LOOKUP_SET as u16,
                self.set.as_ptr(),
            );
        }
        expr
    }
}

/// `NFT_OBJECT_COUNTER` and `NFT_OBJECT_LIMIT` in linux/netfilter/nf_tables.h.
pub const NFT_OBJECT_COUNTER: u32 = 1;
pub const NFT_OBJECT_LIMIT: u32 = 4;

/// `update @set { <reg 1> limit rate over pps/second burst burst packets }`: find or add
/// the element keyed by register 1 (refreshing its timeout) and charge its own limit; the
/// rule goes on only if that element is over its rate. When the set is full a new key is
/// not added and the rule does not go on either (the kernel's dynset breaks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterUpdate {
    pub set: CString,
    pub pps: u32,
    pub burst: u32,
}

impl Expression for MeterUpdate {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let limit = limit_over(self.pps, self.burst);
        let expr = alloc_expr(c"dynset");
        // SAFETY: both expressions are live; libnftnl copies the name and takes ownership of
        // the nested limit expression (freed with the dynset, `len` unused for it).
        unsafe {
            for (attr, value) in [
                (sys::NFTNL_EXPR_DYNSET_SREG_KEY, libc::NFT_REG_1 as u32),
                (sys::NFTNL_EXPR_DYNSET_OP, libc::NFT_DYNSET_OP_UPDATE as u32),
            ] {
                sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value);
            }
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_DYNSET_SET_NAME as u16,
                self.set.as_ptr(),
            );
            let rc = sys::nftnl_expr_set(
                expr.as_ptr(),
                sys::NFTNL_EXPR_DYNSET_EXPR as u16,
                limit.as_ptr().cast::<c_void>(),
                0,
            );
            if rc < 0 {
                // A meter without its limit would drop every packet it sees; the trait
                // cannot report the failure, so stop as on out-of-memory.
                sys::nftnl_expr_free(limit.as_ptr());
                std::process::abort();
            }
        }
        expr
    }
}

/// A `limit rate over pps/second burst burst packets` expression (the rule goes on only
/// over the rate).
fn limit_over(pps: u32, burst: u32) -> NonNull<sys::nftnl_expr> {
    let expr = alloc_expr(c"limit");
    // SAFETY: `expr` is a live limit expression; rate and unit are u64, the rest u32.
    unsafe {
        sys::nftnl_expr_set_u64(
            expr.as_ptr(),
            sys::NFTNL_EXPR_LIMIT_RATE as u16,
            u64::from(pps),
        );
        sys::nftnl_expr_set_u64(expr.as_ptr(), sys::NFTNL_EXPR_LIMIT_UNIT as u16, 1);
        for (attr, value) in [
            (sys::NFTNL_EXPR_LIMIT_BURST, burst),
            (sys::NFTNL_EXPR_LIMIT_TYPE, libc::NFT_LIMIT_PKTS as u32),
            (sys::NFTNL_EXPR_LIMIT_FLAGS, libc::NFT_LIMIT_F_INV as u32),
        ] {
            sys::nftnl_expr_set_u32(expr.as_ptr(), attr as u16, value);
        }
    }
    expr
}

/// A reference to a named object of the rule's table: `counter name "x"` counts the
/// packet, `limit name "x"` lets the rule go on only over the shared limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjRef {
    /// `NFT_OBJECT_COUNTER` or `NFT_OBJECT_LIMIT`.
    pub kind: u32,
    pub name: CString,
}

impl Expression for ObjRef {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"objref");
        // SAFETY: `expr` is a live objref expression; libnftnl copies the name.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_OBJREF_IMM_TYPE as u16,
                self.kind,
            );
            sys::nftnl_expr_set_str(
                expr.as_ptr(),
                sys::NFTNL_EXPR_OBJREF_IMM_NAME as u16,
                self.name.as_ptr(),
            );
        }
        expr
    }
}

/// Allocate an nftnl expression of kind `name`, aborting on out-of-memory as nftnl does.
fn alloc_expr(name: &std::ffi::CStr) -> NonNull<sys::nftnl_expr> {
    // SAFETY: `name` is a valid NUL-terminated string; libnftnl copies what it needs.
    let raw = unsafe { sys::nftnl_expr_alloc(name.as_ptr()) };
    match NonNull::new(raw) {
        Some(expr) => expr,
        None => std::process::abort(),
    }
}

/// `meta nftrace set` from register 1 (the kernel trace's mark; nftnl's `Meta` only
/// loads). The register holds 1, put there by an immediate just before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetNfTrace;

/// The kernel's `NFT_META_NFTRACE` key.
const NFT_META_NFTRACE: u32 = 12;

impl Expression for SetNfTrace {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"meta");
        // SAFETY: `expr` is a live meta expression; both attributes are u32 in libnftnl.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_KEY as u16,
                NFT_META_NFTRACE,
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_META_SREG as u16,
                libc::NFT_REG_1 as u32,
            );
        }
        expr
    }
}

/// `redirect to :port` with the port (big-endian) in register 1, put there by an
/// immediate just before; nftnl has no redirect expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirect;

/// `NF_NAT_RANGE_PROTO_SPECIFIED`: the register holds the port to use.
const NAT_PROTO_SPECIFIED: u32 = 2;

impl Expression for Redirect {
    fn to_expr(&self, _rule: &Rule) -> NonNull<sys::nftnl_expr> {
        let expr = alloc_expr(c"redir");
        // SAFETY: `expr` is a live redir expression; both attributes are u32 in libnftnl.
        unsafe {
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_REDIR_REG_PROTO_MIN as u16,
                libc::NFT_REG_1 as u32,
            );
            sys::nftnl_expr_set_u32(
                expr.as_ptr(),
                sys::NFTNL_EXPR_REDIR_FLAGS as u16,
                NAT_PROTO_SPECIFIED,
            );
        }
        expr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xt_info_layout() {
        let info = XtNfqueue {
            num: 0x0102,
            total: 3,
            flags: 1,
        }
        .info();
        assert_eq!(info[0..2], 0x0102u16.to_ne_bytes());
        assert_eq!(info[2..4], 3u16.to_ne_bytes());
        assert_eq!(
            info[4..8],
            [1u16.to_ne_bytes()[0], 1u16.to_ne_bytes()[1], 0, 0]
        );
    }
}
