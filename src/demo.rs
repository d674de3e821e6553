//! `mpolice demo`: the testbed, both engines and real traffic, summarised for a person.

use std::fmt::Write as _;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::cli::DemoArgs;
use crate::stats::EngineStats;
use crate::testbed::{
    self, EngineProcess, Host, RoleConfig, ServedFile, Testbed, VICTIM_V4, VICTIM_V6,
};

/// Tools the demo runs, and the Debian package of each.
const TOOLS: [(&str, &str); 7] = [
    ("ping", "iputils-ping"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("curl", "curl"),
    ("iperf3", "iperf3"),
    ("python3", "python3"),
    ("sha256sum", "coreutils"),
];

/// Run the demo and print its summary.
pub fn run(args: &DemoArgs) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces: run it as root");
    }
    for (tool, package) in TOOLS {
        if which(tool).is_none() {
            bail!(
                "{tool} not found: install the Debian package {package} (integration/install-deps.sh installs all)"
            );
        }
    }
    // Ctrl-C reaches curl, iperf3 and the engines too; the demo itself must live on
    // long enough to tear the testbed down.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    let check = || {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted; the testbed is removed");
        }
        Ok(())
    };
    let bin = std::env::current_exe().context("find the mpolice binary")?;
    println!(
        "building testbed {}-client ⇄ {}-mbox ⇄ {}-victim ...",
        args.prefix, args.prefix, args.prefix
    );
    let tb = Testbed::up(&args.prefix)?;
    let vcfg = RoleConfig::default().with_capabilities(&tb, "victim")?;
    let mcfg = RoleConfig::default().with_capabilities(&tb, "mbox")?;
    let mut victim = EngineProcess::start(&tb, Host::Victim, "victim", &bin, &vcfg)?;
    let mut mbox = EngineProcess::start(&tb, Host::Mbox, "mbox", &bin, &mcfg)?;
    println!("engines running with capabilities; table inet mpolice installed in both namespaces");
    check()?;

    let served = ServedFile::start(&tb, args.size_mb as usize * (1 << 20))?;
    check()?;

    let mut out = String::new();
    for (family, addr) in [
        ("IPv4", VICTIM_V4.to_string()),
        ("IPv6", format!("[{VICTIM_V6}]")),
    ] {
        let secs = served.fetch(&tb, &addr)?;
        let _ = writeln!(
            out,
            "  curl {} MB over {family}: {secs:.2} s, {:.0} Mbit/s, sha256 identical",
            args.size_mb,
            f64::from(args.size_mb) * 8.0 * 1.048_576 / secs,
        );
    }
    check()?;
    let bps = testbed::iperf3_tcp(&tb, VICTIM_V4, args.iperf_secs)?;
    let _ = writeln!(
        out,
        "  iperf3 TCP {} s over IPv4: {:.2} Gbit/s",
        args.iperf_secs,
        bps / 1e9
    );

    let (ms, _) = mbox.settled_stats(&tb, Host::Mbox)?;
    let (vs, _) = victim.settled_stats(&tb, Host::Victim)?;
    let (mstat, vstat) = (mbox.stop()?, victim.stop()?);
    check()?;
    flood_phase(&tb, &bin, args, &mut out, &check)?;
    let leftover: Vec<String> = [Host::Mbox, Host::Victim]
        .iter()
        .map(|h| tb.nft_tables(*h))
        .collect::<Result<Vec<_>>>()?
        .concat()
        .into_iter()
        .filter(|t| t.contains("mpolice"))
        .collect();

    println!("\nmpolice demo summary");
    print!("{out}");
    println!(
        "  {:<7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>8} {:>8}  rule",
        "role",
        "k.queued",
        "received",
        "accepted",
        "modified",
        "dropped",
        "malformed",
        "errors",
        "k.qdrop",
        "k.udrop"
    );
    for s in [&ms, &vs] {
        println!("  {}", role_line(s));
    }
    let (mc, vc) = (ms.total().engine.caps, vs.total().engine.caps);
    println!(
        "  capabilities: mbox stamped {} and counted {} returned ({} refused); \
         victim stripped {} and returned {} on its ACKs",
        mc.issued,
        mc.returned,
        mc.rejected.total(),
        vc.stripped,
        vc.fed_back
    );
    let (mt, vt) = (ms.total().engine, vs.total().engine);
    println!(
        "  hybrid path: GSO super-packets accepted whole; mbox routed {} to its precise queue \
         ({} segments), victim {} ({} segments)",
        mt.routed, mt.segments, vt.routed, vt.segments
    );
    println!(
        "  clean-up: mbox {mstat}, victim {vstat}; {}",
        if leftover.is_empty() {
            "no table inet mpolice left".to_string()
        } else {
            format!("LEFT BEHIND: {leftover:?}")
        }
    );
    if !mstat.success() || !vstat.success() || !leftover.is_empty() {
        bail!("an engine did not exit cleanly");
    }
    Ok(())
}

/// The flood's source: a second address of the client, so the legitimate transfer and
/// the flood are two senders.
const FLOOD_FROM: &str = "198.18.1.3";

/// A bottleneck behind the mbox, an iperf3 upload from the client and a UDP flood at
/// twice the bottleneck from another address: first with the engines measuring only,
/// then with the mbox policing. Appends one line per run to `out`.
fn flood_phase(
    tb: &Testbed,
    bin: &std::path::Path,
    args: &DemoArgs,
    out: &mut String,
    check: &dyn Fn() -> Result<()>,
) -> Result<()> {
    let mbit = testbed::BOTTLENECK_MBIT;
    tb.bottleneck(mbit, testbed::BOTTLENECK_LIMIT)?;
    tb.exec(
        Host::Client,
        &[
            "ip",
            "addr",
            "add",
            &format!("{FLOOD_FROM}/24"),
            "dev",
            &tb.link("c0"),
        ],
    )?;
    let _server = testbed::Iperf3Server::start(tb, Host::Victim, 5201)?;
    let secs = args.iperf_secs.max(3);
    for (label, police) in [
        ("measuring only (no [police])", None),
        ("policing (natural_share)", Some("natural_share")),
    ] {
        let vcfg = RoleConfig::default().with_capabilities(tb, "victim")?;
        let mut mcfg = RoleConfig::default().with_capabilities(tb, "mbox")?;
        if let (Some(policy), Some(c)) = (police, mcfg.capabilities.as_mut()) {
            c.push_str(&format!("\n[police]\npolicy = \"{policy}\"\n"));
        }
        let mut victim = EngineProcess::start(tb, Host::Victim, "victim", bin, &vcfg)?;
        let mut mbox = EngineProcess::start(tb, Host::Mbox, "mbox", bin, &mcfg)?;
        let rate = format!("{}M", 2 * mbit);
        // Bounded: it stops by itself after the upload, whatever happens here.
        let flood_secs = (secs + 4).to_string();
        let mut flood = testbed::Background::start(
            tb,
            Host::Client,
            "demo-flood",
            &[
                bin.to_str().context("binary path")?,
                "flood",
                "udp",
                "--to",
                VICTIM_V4,
                "--port",
                "9000",
                "--rate",
                &rate,
                "--from",
                FLOOD_FROM,
                "--packets",
                "2000000",
                "--seconds",
                &flood_secs,
            ],
        )?;
        let upload = testbed::iperf3_upload(tb, Host::Client, VICTIM_V4, 5201, secs, 1, 5);
        flood.stop()?;
        let (ms, _) = mbox.settled_stats(tb, Host::Mbox)?;
        let (mstat, vstat) = (mbox.stop()?, victim.stop()?);
        if !mstat.success() || !vstat.success() {
            bail!("an engine did not exit cleanly in the flood phase");
        }
        let dropped =
            ms.unverified_over_source + ms.unverified_over_total + ms.total().engine.dropped;
        let _ = writeln!(
            out,
            "  iperf3 upload through a {mbit} Mbit/s bottleneck under a {} Mbit/s UDP flood, {label}: \
             {:.1} Mbit/s; flood packets dropped before the bottleneck: {dropped}",
            2 * mbit,
            upload? / 1e6,
        );
        check()?;
    }
    Ok(())
}

fn role_line(s: &EngineStats) -> String {
    let t = s.total();
    let k = t.kernel.unwrap_or_default();
    let e = t.engine;
    format!(
        "{:<7} {:>9} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>8} {:>8}  {}",
        s.role,
        k.last_id,
        e.received,
        e.accepted,
        e.modified,
        e.dropped,
        e.malformed,
        e.errors,
        k.queue_dropped,
        k.user_dropped,
        s.queue_rule
    )
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
