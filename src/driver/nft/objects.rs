//! The named sets and objects of the channel for unverified senders, as messages of an
//! nftables batch: the verified sets and the per-source meters (nftnl's `Set`, given the
//! size, flags and timeout it has no setters for), the two drop counters and the total
//! limit (nftnl 0.9.4 has no stateful objects at all).
//!
//! Invariants: everything is declared in the ruleset's own table, before any rule refers
//! to it; both verified sets carry `flags timeout` although their elements never expire,
//! because with a `size` and no flags the kernel picks its fixed-size hash and allocates
//! every bucket up front (measured here: 36 MB for two sets of 2^20), while a timeout set
//! gets the resizable hash, which grows with its elements.

use std::ffi::{CStr, CString, c_char, c_void};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;

use nftnl::nftnl_sys as sys;
use nftnl::set::{Set, SetKey};
use nftnl::{Batch, MsgType, NlMsg, ProtoFamily, Table};

use super::expr::{NFT_OBJECT_COUNTER, NFT_OBJECT_LIMIT};
use super::plan::{
    COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL, LIMIT_TOTAL, METER_V4, METER_V6, VERIFIED_V4,
    VERIFIED_V6,
};
use super::spec::UnverifiedChannel;

/// A stateful object of a table (`counter NAME { }`, `limit NAME { ... }`).
pub(super) struct Object {
    obj: NonNull<sys::nftnl_obj>,
}

impl Object {
    /// A new named object of `kind` in inet table `table`.
    fn new(table: &CStr, name: &CStr, kind: u32) -> Object {
        // SAFETY: plain allocation; checked for NULL below.
        let raw = unsafe { sys::nftnl_obj_alloc() };
        let Some(obj) = NonNull::new(raw) else {
            std::process::abort();
        };
        // SAFETY: `obj` is live; libnftnl copies the strings. The type goes first: it
        // selects the ops the type's own attributes are set through.
        unsafe {
            sys::nftnl_obj_set_u32(obj.as_ptr(), sys::NFTNL_OBJ_TYPE as u16, kind);
            sys::nftnl_obj_set_u32(
                obj.as_ptr(),
                sys::NFTNL_OBJ_FAMILY as u16,
                ProtoFamily::Inet as u32,
            );
            sys::nftnl_obj_set_str(obj.as_ptr(), sys::NFTNL_OBJ_TABLE as u16, table.as_ptr());
            sys::nftnl_obj_set_str(obj.as_ptr(), sys::NFTNL_OBJ_NAME as u16, name.as_ptr());
        }
        Object { obj }
    }

    /// `counter NAME { }`, starting at zero.
    pub(super) fn counter(table: &CStr, name: &CStr) -> Object {
        Object::new(table, name, NFT_OBJECT_COUNTER)
    }

    /// `limit NAME { rate over PPS/second burst BURST packets }`.
    pub(super) fn limit_over(table: &CStr, name: &CStr, pps: u32, burst: u32) -> Object {
        let o = Object::new(table, name, NFT_OBJECT_LIMIT);
        // SAFETY: `o.obj` is a live limit object; rate and unit are u64, the rest u32.
        unsafe {
            let p = o.obj.as_ptr();
            sys::nftnl_obj_set_u64(p, sys::NFTNL_OBJ_LIMIT_RATE as u16, u64::from(pps));
            sys::nftnl_obj_set_u64(p, sys::NFTNL_OBJ_LIMIT_UNIT as u16, 1);
            sys::nftnl_obj_set_u32(p, sys::NFTNL_OBJ_LIMIT_BURST as u16, burst);
            sys::nftnl_obj_set_u32(
                p,
                sys::NFTNL_OBJ_LIMIT_TYPE as u16,
                libc::NFT_LIMIT_PKTS as u32,
            );
            sys::nftnl_obj_set_u32(
                p,
                sys::NFTNL_OBJ_LIMIT_FLAGS as u16,
                libc::NFT_LIMIT_F_INV as u32,
            );
        }
        o
    }
}

// SAFETY: `write` builds one NEWOBJ/DELOBJ message into the batch buffer nftnl hands it,
// which has room for a whole message (as for nftnl's own tables and chains).
unsafe impl NlMsg for Object {
    unsafe fn write(&self, buf: *mut c_void, seq: u32, msg_type: MsgType) {
        let (kind, flags) = match msg_type {
            MsgType::Add => (libc::NFT_MSG_NEWOBJ, libc::NLM_F_CREATE | libc::NLM_F_ACK),
            MsgType::Del => (libc::NFT_MSG_DELOBJ, libc::NLM_F_ACK),
        };
        // SAFETY: `buf` is nftnl's batch buffer (see above); `self.obj` is live.
        unsafe {
            let header = sys::nftnl_nlmsg_build_hdr(
                buf.cast::<c_char>(),
                kind as u16,
                ProtoFamily::Inet as u16,
                flags as u16,
                seq,
            );
            sys::nftnl_obj_nlmsg_build_payload(header, self.obj.as_ptr());
        }
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        // SAFETY: allocated by nftnl_obj_alloc and freed once, here.
        unsafe { sys::nftnl_obj_free(self.obj.as_ptr()) };
    }
}

/// A named set of addresses in `table`: `size` elements at most, with set `flags`
/// (NFT_SET_*) and a default element timeout in ms (0: none).
fn set<'a, K: SetKey>(
    table: &'a Table,
    name: &CStr,
    id: u32,
    size: u32,
    flags: u32,
    timeout_ms: u64,
) -> Set<'a, K> {
    let set = Set::<K>::new_named(name, id, table, ProtoFamily::Inet);
    let p = set.as_ptr().as_ptr();
    // SAFETY: `p` is the live nftnl_set owned by `set`; these attributes are u32 / u64.
    unsafe {
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_FLAGS as u16, flags);
        sys::nftnl_set_set_u32(p, sys::NFTNL_SET_DESC_SIZE as u16, size);
        if timeout_ms > 0 {
            sys::nftnl_set_set_u64(p, sys::NFTNL_SET_TIMEOUT as u16, timeout_ms);
        }
    }
    set
}

/// Add the channel's sets and objects to `batch` (after the table, before the chains),
/// with one step text per message in `steps`.
pub(super) fn add_channel(
    batch: &mut Batch,
    table: &Table,
    table_name: &CStr,
    ch: &UnverifiedChannel,
    steps: &mut Vec<String>,
) {
    let timeout = libc::NFT_SET_TIMEOUT as u32;
    let dynamic = timeout | libc::NFT_SET_EVAL as u32;
    let meter_ms = u64::from(ch.meter_timeout_s) * 1000;
    let name = |n: &str| CString::new(n).expect("set and object names hold no NUL");
    let mut id = 0;
    let mut next_id = || {
        id += 1;
        id
    };
    for (n, size, flags, ms) in [
        (VERIFIED_V4, ch.verified_size, timeout, 0),
        (METER_V4, ch.meter_size, dynamic, meter_ms),
    ] {
        let s = set::<Ipv4Addr>(table, &name(n), next_id(), size, flags, ms);
        batch.add(&s, MsgType::Add);
        steps.push(format!("add set {n}"));
    }
    for (n, size, flags, ms) in [
        (VERIFIED_V6, ch.verified_size, timeout, 0),
        (METER_V6, ch.meter_size, dynamic, meter_ms),
    ] {
        let s = set::<Ipv6Addr>(table, &name(n), next_id(), size, flags, ms);
        batch.add(&s, MsgType::Add);
        steps.push(format!("add set {n}"));
    }
    for n in [COUNTER_OVER_SOURCE, COUNTER_OVER_TOTAL] {
        batch.add(&Object::counter(table_name, &name(n)), MsgType::Add);
        steps.push(format!("add counter {n}"));
    }
    let limits = ch.limits;
    let limit = Object::limit_over(
        table_name,
        &name(LIMIT_TOTAL),
        limits.total_pps,
        limits.total_burst,
    );
    batch.add(&limit, MsgType::Add);
    steps.push(format!("add limit {LIMIT_TOTAL}"));
}
