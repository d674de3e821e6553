//! Root tests of the channel for unverified senders, in throwaway network namespaces
//! (skipped when not root): the ruleset with its sets and objects installs, renders as
//! text `nft -f` loads, and reads back the same; packets from an unverified source reach
//! the queue within its own limit and within the total, the rest is dropped and counted;
//! a source the engine verified reaches the queue whole, through a flood; a full meter
//! leaves new sources to the total limit. Addresses only from 198.18.0.0/15 and
//! 2001:2::/48.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::netns_tests::{
    Netns, Path, addresses, chain_headers, raw_sender, rule_matches, send_raw,
};
use super::render::render_accept;
use super::*;
use crate::driver::nfqueue::{Incoming, Queue as NfQueue, QueueConfig, Verdict};
use crate::wire::build::Builder;

const V4: &str = "198.18.2.2";
const V6: &str = "2001:2:0:2::2";

fn selection() -> Selection {
    Selection {
        addresses: vec![V4.parse().unwrap(), "2001:2:0:2::/64".parse().unwrap()],
        tcp_ports: vec!["80".parse().unwrap()],
        udp_ports: vec!["5000-5010".parse().unwrap()],
    }
}

fn queue(count: u16) -> QueueTarget {
    QueueTarget {
        first: 3,
        count,
        bypass: false,
        fanout: false,
    }
}

/// The mbox's ruleset for `count` queues with the channel.
fn mbox(count: u16, limits: &UnverifiedLimits) -> RulesetSpec {
    mbox_for(&selection(), count, limits)
}

fn mbox_for(sel: &Selection, count: u16, limits: &UnverifiedLimits) -> RulesetSpec {
    let mut spec = plan(Role::Mbox, sel, &queue(count));
    add_unverified_channel(&mut spec, limits);
    spec
}

const LIMITS: UnverifiedLimits = UnverifiedLimits {
    per_source_pps: 10,
    per_source_burst: 20,
    total_pps: 1000,
    total_burst: 100,
    v6_source_prefix: 64,
};

/// The declarations of sets and objects in nft text, one string per block with its
/// lines (counter values left out: the kernel lists them, `rules show` does not), sorted.
fn declarations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match &mut current {
            None => {
                if ["set ", "counter ", "limit "]
                    .iter()
                    .any(|k| line.starts_with(k))
                    && line.ends_with('{')
                {
                    current = Some(line.to_owned());
                }
            }
            Some(block) => {
                if line == "}" {
                    out.push(current.take().unwrap_or_default());
                } else if !line.starts_with("packets ") && !line.is_empty() {
                    block.push_str(" | ");
                    block.push_str(line);
                }
            }
        }
    }
    out.sort();
    out
}

#[test]
fn channel_installs_and_reads_back_as_rules_show_prints_it() {
    // Every address of both families, where nft writes no `meta nfproto` ahead of a
    // lookup or meter of the source address (one queue: nft writes none ahead of a
    // client hash either, which the channel does not change).
    let everything = Selection {
        addresses: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()],
        ..Selection::default()
    };
    for (count, sel) in [(1, selection()), (2, selection()), (1, everything)] {
        let Some(ns) = Netns::new() else { return };
        let spec = mbox_for(&sel, count, &LIMITS);
        let kind = ns
            .run(|| install(&spec, QueuePreference::Auto))
            .expect("install with the channel");
        assert_eq!(kind, ns.queue_kind());
        let listing = ns.list();
        let text = render(&spec);
        assert_eq!(rule_matches(&listing), rule_matches(&text), "{listing}");
        assert_eq!(declarations(&listing), declarations(&text), "{listing}");
        assert_eq!(declarations(&text).len(), 7, "{text}");
        // Per prefix: a verified rule per queue, the two drops, a queue rule per queue.
        let to_victim = usize::from(count) * 2 + 2;
        assert_eq!(
            rule_matches(&listing)
                .iter()
                .filter(|(_, c)| c.contains("to_victim"))
                .count(),
            2 * to_victim,
            "{listing}"
        );
        let (source, total) = if sel.addresses[0].is_empty() {
            ("", "meta nfproto ipv6 ")
        } else {
            ("ip daddr 198.18.2.2 ", "ip6 daddr 2001:2:0:2::/64 ")
        };
        assert!(
            listing.contains(&format!(
                "\t{source}update @unverified_rate_v4 {{ ip saddr limit rate over 10/second burst 20 packets }} counter name \"unverified_over_source\" drop comment"
            )),
            "{listing}"
        );
        assert!(listing.contains(&format!(
            "\t{total}limit name \"unverified_total\" counter name \"unverified_over_total\" drop comment"
        )));
        assert_eq!(ns.run(unverified_drops).expect("counters"), (0, 0));

        // The same as text: it loads with `nft -f` (the queue statement aside where the
        // kernel lacks nft_queue), also over the installed table, and reads back the same.
        match ns.nft_load(&text) {
            Ok(()) => assert!(ns.has_native_queue()),
            Err(e) => assert!(
                !ns.has_native_queue() && e.contains("No such file or directory"),
                "{e}"
            ),
        }
        let accept = render_accept(&spec);
        ns.nft_load(&accept).expect("accept variant loads");
        let listing = ns.list();
        assert_eq!(rule_matches(&listing), rule_matches(&accept), "{listing}");
        assert_eq!(declarations(&listing), declarations(&text), "{listing}");
        assert_eq!(chain_headers(&listing).len(), 2, "{listing}");
        // Removing the table removes the channel's state with it.
        assert!(ns.run(|| remove(TABLE)).expect("remove"));
        assert_eq!(ns.run(unverified_drops).expect("no table"), (0, 0));
    }
}

#[test]
fn invalid_channel_limits_are_refused_before_anything_is_sent() {
    let Some(ns) = Netns::new() else { return };
    let spec = mbox(
        1,
        &UnverifiedLimits {
            total_pps: 0,
            ..LIMITS
        },
    );
    let err = ns
        .run(|| install(&spec, QueuePreference::Auto))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid ruleset: unverified channel: total_pps = 0 must be 1 to 1000000000"
    );
    assert!(!ns.run(|| table_exists(TABLE)).expect("table_exists"));
}

/// Return the elements of one of table mpolice's sets, as nft lists them.
fn elements(ns: &Netns, set: &str) -> BTreeSet<IpAddr> {
    let json = ns.exec_ok("nft", &["-j", "list", "set", "inet", TABLE, set]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft -j");
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("set"))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| e.as_str().expect("an address").parse().expect("an address"))
        .collect()
}

#[test]
fn verified_set_changes_never_fail_on_present_or_absent_addresses() {
    let Some(ns) = Netns::new() else { return };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let (a, b, c) = (ip("198.18.1.7"), ip("198.18.1.8"), ip("2001:2:0:1::7"));
    // Before the channel is installed: deleting succeeds, adding names what failed.
    let mut set = ns.run(VerifiedSet::open).expect("open");
    set.apply(&[(a, false), (c, false)])
        .expect("deletes without sets");
    let err = set.apply(&[(a, true)]).unwrap_err().to_string();
    assert_eq!(
        err,
        "nftables request failed at add 198.18.1.7 to set verified_v4: No such file or directory (os error 2)"
    );
    ns.run(|| install(&mbox(1, &LIMITS), QueuePreference::Auto))
        .expect("install");
    // The socket stays in the namespace it was opened in, whichever thread uses it.
    set.apply(&[(a, true), (a, true), (c, true)])
        .expect("adds, one twice");
    set.apply(&[(a, true), (b, false)])
        .expect("a present add, an absent delete");
    assert_eq!(elements(&ns, VERIFIED_V4), BTreeSet::from([a]));
    assert_eq!(elements(&ns, VERIFIED_V6), BTreeSet::from([c]));
    set.apply(&[(a, false), (a, false), (b, true), (c, false), (c, false)])
        .expect("deletes twice in one batch, between adds");
    assert_eq!(elements(&ns, VERIFIED_V4), BTreeSet::from([b]));
    assert!(elements(&ns, VERIFIED_V6).is_empty());
    // More changes than one batch holds, both families.
    let many: Vec<IpAddr> = (0u32..2500)
        .map(|i| {
            if i % 2 == 0 {
                IpAddr::from((0xc613_0000u32 + i).to_be_bytes())
            } else {
                IpAddr::from((0x2001_0002_u128 << 96 | u128::from(i)).to_be_bytes())
            }
        })
        .collect();
    let adds: Vec<(IpAddr, bool)> = many.iter().map(|&m| (m, true)).collect();
    set.apply(&adds).expect("2500 adds");
    assert_eq!(elements(&ns, VERIFIED_V4).len(), 1 + 1250);
    assert_eq!(elements(&ns, VERIFIED_V6).len(), 1250);
    let dels: Vec<(IpAddr, bool)> = many.iter().map(|&m| (m, false)).collect();
    set.apply(&dels).expect("2500 deletes");
    set.apply(&dels).expect("2500 deletes of absent addresses");
    assert_eq!(elements(&ns, VERIFIED_V4), BTreeSet::from([b]));
    // An engine whose table was removed under it: deletes still succeed.
    assert!(ns.run(|| remove(TABLE)).expect("remove"));
    set.apply(&[(b, false)]).expect("delete after remove");
}

/// A path client ⇄ mbox ⇄ victim with the channel installed on the mbox and its queues
/// bound; the client's raw sockets send in any source's name.
struct Bench {
    path: Path,
    queues: Vec<NfQueue>,
    senders: [OwnedFd; 2],
    /// Per source: the queues its packets reached, and how many.
    seen: BTreeMap<IpAddr, (BTreeSet<u16>, usize)>,
}

impl Bench {
    fn new(count: u16, limits: &UnverifiedLimits, meter_size: Option<u32>) -> Option<Bench> {
        let path = Path::new()?;
        // Spoofed sources from another prefix must not meet reverse-path filtering.
        path.m.exec_ok(
            "sysctl",
            &[
                "-qw",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
                "net.ipv4.conf.mc.rp_filter=0",
            ],
        );
        let mut spec = mbox(count, limits);
        if let (Some(size), Some(ch)) = (meter_size, spec.channel.as_mut()) {
            ch.meter_size = size;
        }
        path.m
            .run(|| install(&spec, QueuePreference::Auto))
            .expect("install");
        let q = queue(count);
        let queues = (q.first..q.first + count)
            .map(|num| {
                let cfg = QueueConfig {
                    rcvbuf_bytes: 8 << 20,
                    recv_timeout: Duration::from_millis(50),
                    ..QueueConfig::new(num)
                };
                path.m.run(|| NfQueue::open(&cfg)).expect("bind the queue")
            })
            .collect();
        let senders = [raw_sender(&path.c, false), raw_sender(&path.c, true)];
        Some(Bench {
            path,
            queues,
            senders,
            seen: BTreeMap::new(),
        })
    }

    /// Send `n` UDP datagrams from `src` to the protected address of its family.
    fn send(&self, src: IpAddr, n: usize) {
        let dst: IpAddr = if src.is_ipv4() { V4 } else { V6 }.parse().unwrap();
        let p = Builder::udp(src, dst, 40000, 5001)
            .payload(b"channel")
            .build();
        for _ in 0..n {
            send_raw(&self.senders[usize::from(src.is_ipv6())], dst, &p);
        }
    }

    /// Read every queue until all stay quiet (dropping each packet); return how many
    /// packets each source got queued since the last call.
    fn drain(&mut self) -> BTreeMap<IpAddr, usize> {
        let mut now = BTreeMap::new();
        let mut quiet = 0;
        while quiet < 3 {
            let mut got = 0;
            for queue in &mut self.queues {
                while let Some(incoming) = queue.recv(true).expect("recv") {
                    let Incoming::Packet(msg) = incoming else {
                        panic!("unreadable packet: {incoming:?}")
                    };
                    let (src, _) = addresses(queue.payload(&msg));
                    let entry = self.seen.entry(src).or_default();
                    entry.0.insert(queue.num());
                    entry.1 += 1;
                    *now.entry(src).or_insert(0) += 1;
                    got += 1;
                    queue.verdict(msg.id, Verdict::Drop, None).expect("verdict");
                }
            }
            quiet = if got == 0 { quiet + 1 } else { 0 };
        }
        now
    }

    /// (over a source's rate, over the total) dropped so far.
    fn drops(&self) -> (u64, u64) {
        self.path.m.run(unverified_drops).expect("read counters")
    }
}

/// Most packets a token bucket of `burst` refilled at `pps` lets through in `elapsed`.
fn bucket_max(pps: u32, burst: u32, elapsed: Duration) -> usize {
    burst as usize + (f64::from(pps) * elapsed.as_secs_f64()).ceil() as usize + 1
}

#[test]
fn an_unverified_source_is_held_to_its_rate_and_a_verified_one_is_not() {
    const N: usize = 300;
    let l = UnverifiedLimits {
        total_pps: 1_000_000,
        total_burst: 1_000_000,
        ..LIMITS
    };
    for count in [1, 2] {
        let Some(mut b) = Bench::new(count, &l, None) else {
            return;
        };
        let sources: [IpAddr; 2] = [
            "198.18.1.10".parse().unwrap(),
            "2001:2:0:1::10".parse().unwrap(),
        ];
        let mut set = b
            .path
            .m
            .run(VerifiedSet::open)
            .expect("open the verified set");

        // Unverified: the bucket's burst, and what it refilled while the packets passed.
        let start = Instant::now();
        for &s in &sources {
            b.send(s, N);
        }
        let queued = b.drain();
        let most = bucket_max(l.per_source_pps, l.per_source_burst, start.elapsed());
        for s in &sources {
            let q = queued.get(s).copied().unwrap_or(0);
            assert!(
                (l.per_source_burst as usize..=most).contains(&q),
                "{count} queues, {s}: {q} queued of {N}, expected {}..={most}",
                l.per_source_burst
            );
        }
        let limited: usize = queued.values().sum();
        let dropped = (2 * N - limited) as u64;
        assert_eq!(b.drops(), (dropped, 0));

        // Verified: every packet reaches the queue, nothing is counted.
        set.apply(&[(sources[0], true), (sources[1], true)])
            .expect("verify");
        for &s in &sources {
            b.send(s, N);
        }
        let queued = b.drain();
        for s in &sources {
            assert_eq!(queued.get(s), Some(&N), "{count} queues, verified {s}");
        }
        assert_eq!(b.drops(), (dropped, 0));

        // Forgotten: limited again.
        set.apply(&[(sources[0], false), (sources[1], false)])
            .expect("forget");
        let start = Instant::now();
        for &s in &sources {
            b.send(s, N);
        }
        let queued = b.drain();
        let most = bucket_max(l.per_source_pps, l.per_source_burst, start.elapsed());
        for s in &sources {
            let q = queued.get(s).copied().unwrap_or(0);
            assert!(
                q <= most,
                "{count} queues, forgotten {s}: {q} queued of {N}"
            );
        }
        let again = (2 * N - queued.values().sum::<usize>()) as u64;
        assert_eq!(b.drops(), (dropped + again, 0));

        // Verified or not, a source's packets meet one queue.
        for (s, (queues, _)) in &b.seen {
            assert_eq!(queues.len(), 1, "{s} reached queues {queues:?}");
        }
        eprintln!(
            "{count} queues: per source {N} sent, {limited} of {} queued unverified; drops {:?}",
            2 * N,
            b.drops()
        );
    }
}

/// A host owns its whole /64 and can send from any address in it: those addresses share
/// one bucket, and a source in another /64 has its own.
#[test]
fn ipv6_addresses_of_one_64_share_a_source_rate() {
    const N: usize = 300;
    let l = UnverifiedLimits {
        total_pps: 1_000_000,
        total_burst: 1_000_000,
        ..LIMITS
    };
    let Some(mut b) = Bench::new(1, &l, None) else {
        return;
    };
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    let (one, same_64, other_64) = (
        ip("2001:2:0:1::10"),
        ip("2001:2:0:1:ffff::20"),
        ip("2001:2:0:3::10"),
    );
    let start = Instant::now();
    for s in [one, same_64, other_64] {
        b.send(s, N);
    }
    let queued = b.drain();
    let most = bucket_max(l.per_source_pps, l.per_source_burst, start.elapsed());
    let count = |s| queued.get(&s).copied().unwrap_or(0);
    let shared = count(one) + count(same_64);
    assert!(
        (l.per_source_burst as usize..=most).contains(&shared),
        "one /64: {shared} queued of {}, expected {}..={most}",
        2 * N,
        l.per_source_burst
    );
    assert!(
        (l.per_source_burst as usize..=most).contains(&count(other_64)),
        "another /64: {} queued of {N}",
        count(other_64)
    );
    let listing = b
        .path
        .m
        .exec_ok("nft", &["list", "set", "inet", TABLE, METER_V6]);
    assert_eq!(listing.matches(" limit rate over").count(), 2, "{listing}");
}

#[test]
fn a_spoofed_flood_is_held_to_the_total_and_a_verified_sender_gets_through_whole() {
    const SOURCES: u32 = 2000;
    const EACH: usize = 2;
    const VERIFIED_EVERY: u32 = 10;
    let l = UnverifiedLimits {
        per_source_pps: 1000,
        per_source_burst: 1000,
        total_pps: 100,
        total_burst: 200,
        v6_source_prefix: 64,
    };
    for count in [1, 2] {
        let Some(mut b) = Bench::new(count, &l, None) else {
            return;
        };
        let real: IpAddr = "198.18.1.10".parse().unwrap();
        let mut set = b
            .path
            .m
            .run(VerifiedSet::open)
            .expect("open the verified set");
        set.apply(&[(real, true)]).expect("verify");
        let start = Instant::now();
        let mut real_sent = 0;
        // 198.19.0.0/16, source by source, the verified sender in between.
        for i in 0..SOURCES {
            let spoofed = IpAddr::from((0xc613_0000u32 + 1 + i).to_be_bytes());
            b.send(spoofed, EACH);
            if i % VERIFIED_EVERY == 0 {
                b.send(real, 1);
                real_sent += 1;
            }
            // Stay well inside the receiving CPU's backlog (netdev_max_backlog, 1000), so
            // every packet meets the rules even when softirqs run late on a busy machine.
            if i % 128 == 127 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let queued = b.drain();
        let elapsed = start.elapsed();
        let flood = SOURCES as usize * EACH;
        let spoofed: usize = queued
            .iter()
            .filter(|(s, _)| **s != real)
            .map(|(_, n)| n)
            .sum();
        let most = bucket_max(l.total_pps, l.total_burst, elapsed);
        assert!(
            (l.total_burst as usize..=most).contains(&spoofed),
            "{count} queues: {spoofed} of {flood} spoofed packets queued, expected {}..={most}",
            l.total_burst
        );
        assert_eq!(queued.get(&real), Some(&real_sent), "the verified sender");
        assert_eq!(b.drops(), (0, (flood - spoofed) as u64));
        let used: BTreeSet<u16> = b.seen.values().flat_map(|(q, _)| q.clone()).collect();
        assert_eq!(used.len(), usize::from(count), "{used:?}");
        eprintln!(
            "{count} queues: {flood} spoofed from {SOURCES} sources, {spoofed} queued in {elapsed:?}; verified {real_sent} of {real_sent}"
        );
    }
}

/// When the meter is full the kernel adds no new source (its dynset breaks): the
/// per-source rule does not match, and a new source meets only the total limit.
#[test]
fn a_full_meter_leaves_new_sources_to_the_total_limit() {
    const METER: u32 = 8;
    const SOURCES: u32 = 20;
    const EACH: usize = 10;
    let l = UnverifiedLimits {
        per_source_pps: 1,
        per_source_burst: 2,
        total_pps: 1_000_000,
        total_burst: 1_000_000,
        v6_source_prefix: 64,
    };
    let Some(mut b) = Bench::new(1, &l, Some(METER)) else {
        return;
    };
    let start = Instant::now();
    let sources: Vec<IpAddr> = (0..SOURCES)
        .map(|i| IpAddr::from((0xc612_0164u32 + i).to_be_bytes()))
        .collect();
    for &s in &sources {
        b.send(s, EACH);
    }
    let queued = b.drain();
    let most = bucket_max(l.per_source_pps, l.per_source_burst, start.elapsed());
    let (first, rest) = sources.split_at(METER as usize);
    for s in first {
        let q = queued.get(s).copied().unwrap_or(0);
        assert!((2..=most).contains(&q), "{s} in the meter: {q} queued");
    }
    for s in rest {
        assert_eq!(queued.get(s), Some(&EACH), "{s} found the meter full");
    }
    let limited: usize = first.iter().map(|s| queued[s]).sum();
    assert_eq!(b.drops(), ((METER as usize * EACH - limited) as u64, 0));
    let listing = b
        .path
        .m
        .exec_ok("nft", &["list", "set", "inet", TABLE, METER_V4]);
    assert_eq!(
        listing.matches(" limit rate over 1/second").count(),
        8,
        "{listing}"
    );
}
