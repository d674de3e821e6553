//! Property tests: random and corrupted kernel bytes never panic the decoders,
//! and what we encode decodes back to the same route.

use proptest::prelude::*;

use super::wire::*;
use crate::driver::netlink::*;

/// A random route with attribute payloads small enough for a u16 length.
fn arb_route() -> impl Strategy<Value = Route> {
    let hdr = any::<[u8; RTMSG_LEN]>().prop_filter_map("a whole header", |b| RtHdr::decode(&b));
    let attr = (1u16..40, proptest::collection::vec(any::<u8>(), 0..40));
    (hdr, proptest::collection::vec(attr, 0..10)).prop_map(|(hdr, attrs)| Route { hdr, attrs })
}

proptest! {
    #[test]
    fn random_bodies_decode_without_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some(r) = Route::decode(&body) {
            let _ = r.table();
            let _ = r.priority();
            let _ = r.metric(RTAX_ADVMSS);
            let mut buf = Vec::new();
            r.new_request(Some(1400)).encode(&mut buf, RTM_NEWROUTE, 0, 1);
            r.new_request(None).encode(&mut buf, RTM_NEWROUTE, 0, 2);
            r.delete_request().encode(&mut buf, RTM_DELROUTE, 0, 3);
            prop_assert_eq!(messages(&buf).count(), 3);
        }
    }

    #[test]
    fn random_datagrams_yield_messages_inside_the_buffer(
        buf in proptest::collection::vec(any::<u8>(), 0..300),
        flags in any::<u16>(),
    ) {
        for m in messages(&buf) {
            prop_assert!(m.body.end <= buf.len());
            let _ = error_body(&buf[m.body.clone()], flags);
            let _ = Route::decode(&buf[m.body]);
        }
        let _ = error_body(&buf, flags);
    }

    #[test]
    fn encoded_routes_decode_to_themselves(route in arb_route()) {
        let mut buf = Vec::new();
        route.encode(&mut buf, RTM_NEWROUTE, 0, 1);
        let (msg, next) = next_msg(&buf, 0).expect("message");
        prop_assert_eq!(next, buf.len());
        prop_assert_eq!(Route::decode(&buf[msg.body]), Some(route));
    }

    #[test]
    fn corrupted_routes_decode_without_panic(
        route in arb_route(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        route.encode(&mut buf, RTM_NEWROUTE, 0, 1);
        let i = at.index(buf.len());
        buf[i] = byte;
        buf.truncate(cut.index(buf.len() + 1));
        for m in messages(&buf) {
            if let Some(r) = Route::decode(&buf[m.body]) {
                let _ = r.new_request(Some(1));
            }
        }
    }

    #[test]
    fn metrics_rebuild_ends_with_exactly_one_advmss(
        old in proptest::collection::vec(any::<u8>(), 0..200),
        mss in 1u16..,
    ) {
        let m = rebuild_metrics(&old, mss);
        let attrs: Vec<_> = Attrs::new(&m, 0..m.len()).collect();
        prop_assert_eq!(attrs.iter().filter(|(t, _)| *t == RTAX_ADVMSS).count(), 1);
        let (t, r) = attrs.last().cloned().expect("advmss");
        prop_assert_eq!(t, RTAX_ADVMSS);
        prop_assert_eq!(ne_u32(&m[r]), Some(u32::from(mss)));
    }

    #[test]
    fn multipath_sanitizing_never_grows_past_alignment(
        mp in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let out = sanitize_multipath(&mp);
        prop_assert!(out.len() <= align4(mp.len()));
        prop_assert_eq!(out.len() % 4, 0);
    }
}
