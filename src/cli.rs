//! The command line: one binary, a subcommand per job.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config;
use crate::driver::control::{Request, Withheld};
use crate::driver::policies::{PortsAnswer, PortsRequest};
use crate::driver::{control, engine, nft};

/// MiddlePolice DDoS defence as a netfilter (NFQUEUE) verdict engine.
///
/// nftables rules queue the protected traffic to this process, which parses each
/// packet, rewrites it if its role requires, and returns a verdict. Run `mbox` on the
/// policing middlebox and `victim` on the protected server; `server` on a host that
/// wants port policies only.
#[derive(Debug, Parser)]
#[command(name = "mpolice", version, propagate_version = true)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "info", env = "MPOLICE_LOG")]
    pub log_level: tracing::Level,
    /// Log lines as text, or as one JSON object each (for log shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "MPOLICE_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the policing middlebox: queue traffic to and from the protected addresses.
    ///
    /// Installs table `inet mpolice` (removed again on SIGINT/SIGTERM), binds one
    /// NFQUEUE queue per worker and serves stats on the control socket.
    Mbox(RunArgs),
    /// Run on the protected server: queue its inbound and outbound protected traffic.
    ///
    /// Installs table `inet mpolice` (removed again on SIGINT/SIGTERM), binds one
    /// NFQUEUE queue per worker and serves stats on the control socket.
    Victim(RunArgs),
    /// Run port policies only, on a server that wants no MiddlePolice: forwarding
    /// rules, traffic groups and per-port statistics (its `[ports]` section).
    ///
    /// The victim's queues and chains without capabilities: its config needs a
    /// `[ports]` section and takes no `[capabilities]` (see examples/server.toml).
    Server(RunArgs),
    /// Make a running engine read its config file again (as SIGHUP does) and put it in
    /// force without a gap; print what changed, or why nothing did.
    ///
    /// Live: the protected addresses and ports (the rules are replaced in one batch, the
    /// workers take the new selection before their next packet) and the port policies'
    /// rules and groups. A config that does not parse, or changes anything else (queues,
    /// capabilities, police, trace, the control socket), is refused, naming it, and the
    /// running config stays. With no --socket, asks every engine in /run/mpolice.
    Reload(ReloadArgs),
    /// Check a role's config file without touching the kernel: exit 0 and a line if it
    /// is valid, else the line naming what is wrong and exit 1.
    Check(RoleConfig),
    /// Install, remove or print the nftables rules of a role without running it.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Print a running engine's counters, per queue, beside the kernel's own.
    ///
    /// With no --socket, asks every engine with a socket in /run/mpolice.
    Stats(StatsArgs),
    /// Build a client ⇄ mbox ⇄ victim testbed in network namespaces, push real
    /// traffic through both engines, then a bounded UDP flood through a bottleneck
    /// with and without policing, print a summary and clean up.
    Demo(DemoArgs),
    /// Manage the mbox's capability MAC keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List, add or remove the senders a running victim withholds feedback from.
    ///
    /// Their capabilities are stripped and never returned: the mbox counts their
    /// stamped packets as lost and polices them as losing senders. Takes effect within
    /// a few milliseconds, until the engine stops (list them in
    /// `capabilities.withhold_feedback` to keep them across restarts).
    Withhold(WithholdArgs),
    /// Look at or change a running victim's port policies (its `[ports]` section):
    /// forwarding rules by incoming port, traffic groups by id.
    ///
    /// Rules and groups are written as in the config, as one TOML inline table, e.g.
    /// `mpolice ports forward set '{ port = 8080, default = 8082, dice = [{ percent = 30,
    /// to = 8081 }] }'`. Each change is checked as the config is, reaches every worker
    /// within a few milliseconds, and lasts until the engine stops; the answer says what
    /// changed and lists what is in force.
    Ports(PortsArgs),
    /// Send a bounded UDP or SYN flood from this network namespace, for the attack
    /// testbed: only to and from 198.18.0.0/15 and 2001:2::/48, and it stops at
    /// --packets or --seconds, whichever comes first.
    Flood(crate::flood::FloodArgs),
    /// Read a packet-journey trace (`[trace]` in the config, or `--trace FILE`).
    #[command(subcommand)]
    Trace(TraceCommand),
    /// Write the man pages and shell completions, generated from this command line's
    /// own definition, into a directory (for packaging).
    #[command(hide = true)]
    Generate {
        /// Where: man pages under man1/, completions under completions/.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    /// Print a raw trace as numbered lines, one per stage edge (B: begins, E: ends),
    /// indented by nesting, with each packet's time from receive to verdict.
    ///
    /// Columns: line, time (UTC), source, destination, stage, B/E, then for TCP the
    /// flags (S, F, P, or ! for none), sequence, `ack` and acknowledgment; then the IP
    /// id (- over IPv6) and the protocol.
    Format {
        /// The raw trace file (`-` for standard input).
        file: PathBuf,
        /// One JSON object per packet instead, its stages paired into durations.
        #[arg(long)]
        json: bool,
    },
    /// Compare traces with a capture taken on an interface (tcpdump -w): which captured
    /// packets each engine saw, what it changed (bytes added or removed; markers and
    /// MSS when the trace has its pcaps), how long it held them, and which packets no
    /// engine saw (bypassed, sampled out, or lost).
    Compare {
        /// The capture (pcap: raw IP, Ethernet or Linux cooked).
        #[arg(long)]
        capture: PathBuf,
        /// A raw trace (repeat for the mbox and the victim).
        #[arg(long = "trace", required = true)]
        traces: Vec<PathBuf>,
        /// Also list every captured packet and who saw it.
        #[arg(long)]
        packets: bool,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct WithholdArgs {
    /// Control socket of the victim (default /run/mpolice/victim.sock).
    #[arg(short, long, default_value = "/run/mpolice/victim.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub op: WithholdOp,
}

#[derive(Debug, Subcommand)]
pub enum WithholdOp {
    /// Print the senders feedback is withheld from.
    List,
    /// Withhold feedback from a sender address or prefix.
    Add { prefix: String },
    /// Return feedback to a sender again.
    Remove { prefix: String },
}

#[derive(Debug, Args)]
pub struct PortsArgs {
    /// Control socket of the victim (default /run/mpolice/victim.sock).
    #[arg(short, long, default_value = "/run/mpolice/victim.sock")]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub op: PortsOp,
}

#[derive(Debug, Subcommand)]
pub enum PortsOp {
    /// Print the forwarding rules and groups in force.
    List,
    /// Forwarding rules, one per incoming port.
    #[command(subcommand)]
    Forward(ForwardOp),
    /// Traffic groups, by id.
    #[command(subcommand)]
    Group(GroupOp),
}

#[derive(Debug, Subcommand)]
pub enum ForwardOp {
    /// Add the rule of its port, or replace the one there.
    Set { table: String },
    /// Delete the rule of a port.
    Del { port: u16 },
    /// Delete every rule.
    Flush,
}

#[derive(Debug, Subcommand)]
pub enum GroupOp {
    /// Add a group; the answer names its id.
    Add { table: String },
    /// Replace group ID (its quota and counts start afresh).
    Edit { id: u32, table: String },
    /// Delete group ID.
    Del { id: u32 },
    /// Delete every group.
    Flush,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new key file line (`ID HEX`) from /dev/urandom.
    ///
    /// A key file holds at most two lines: the last is the current key, which signs;
    /// the one before is the previous key, still accepted until the engine restarts.
    /// Rotate with `mpolice keys new --id N >> keyfile` after dropping the oldest line.
    New {
        /// Key id, 0 to 15, carried in every capability so keys can rotate.
        #[arg(long, default_value_t = 1)]
        id: u8,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The role's TOML config (see examples/mbox.toml, examples/victim.toml and
    /// examples/server.toml).
    #[arg(short, long)]
    pub config: PathBuf,
    /// Trace every packet's stages to this file (overrides `trace.file`; read it with
    /// `mpolice trace format`).
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// With the trace, the packets as received and as returned in FILE.in.pcap and
    /// FILE.out.pcap (`trace.pcap`).
    #[arg(long, requires = "trace")]
    pub trace_pcap: bool,
    /// With the trace, the kernel's side too: protected traffic is marked with
    /// `meta nftrace` and nftables' trace events go into the trace (`trace.kernel`).
    #[arg(long, requires = "trace")]
    pub trace_kernel: bool,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Install the role's rules in table `inet mpolice` (replacing any earlier copy).
    ///
    /// Without a running engine, queued packets are dropped (or accepted, with
    /// `queue.bypass = true`).
    Install(RoleConfig),
    /// Delete table `inet mpolice` and nothing else.
    Remove,
    /// Print, as nft text, the rules the role would install.
    Show(RoleConfig),
}

#[derive(Debug, Args)]
pub struct RoleConfig {
    /// The role: mbox, victim or server.
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// The role's TOML config.
    #[arg(short, long)]
    pub config: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Mbox,
    Victim,
    /// Port policies only (`mpolice server`): the victim's rules.
    Server,
}

impl From<RoleArg> for nft::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Mbox => nft::Role::Mbox,
            RoleArg::Victim | RoleArg::Server => nft::Role::Victim,
        }
    }
}

impl RoleArg {
    /// The role's name, as its config is checked and its stats name it.
    fn name(self) -> &'static str {
        match self {
            RoleArg::Mbox => "mbox",
            RoleArg::Victim => "victim",
            RoleArg::Server => config::SERVER,
        }
    }
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Control socket of the engine to reload (repeatable).
    #[arg(short, long)]
    pub socket: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Control socket of the engine to ask (repeatable).
    #[arg(short, long)]
    pub socket: Vec<PathBuf>,
    /// Print JSON (one object per engine, one per line) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also list the mbox's most active senders: NR, ND, WR, LLR, capabilities issued
    /// and returned, delivered last period, non-TCP packets, state.
    #[arg(long)]
    pub senders: bool,
    /// Also print the per-port statistics (a victim with a `[ports]` section): bytes
    /// and packets in and out, handshakes completed and their mean time, half-open and
    /// abandoned ones, and the listening socket's accept queue (waiting/backlog).
    #[arg(long)]
    pub ports: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the file downloaded over each address family, in MB.
    #[arg(long, default_value_t = 20)]
    pub size_mb: u32,
    /// Seconds of iperf3 TCP traffic.
    #[arg(long, default_value_t = 3)]
    pub iperf_secs: u32,
    /// Prefix of the namespace names (change it to run two demos at once).
    #[arg(long, default_value = "mpd")]
    pub prefix: String,
}

/// Directory where engines put their control sockets by default.
const RUN_DIR: &str = "/run/mpolice";

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_max_level(cli.log_level)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Mbox(a) => run_role(RoleArg::Mbox, &a),
        Command::Victim(a) => run_role(RoleArg::Victim, &a),
        Command::Server(a) => run_role(RoleArg::Server, &a),
        Command::Rules(r) => rules(r),
        Command::Stats(s) => stats(s),
        Command::Demo(d) => crate::demo::run(&d),
        Command::Flood(f) => crate::flood::command(&f),
        Command::Keys(KeysCommand::New { id }) => {
            println!("{}", crate::capability::generate_key_line(id)?);
            Ok(())
        }
        Command::Withhold(w) => withhold(w),
        Command::Reload(r) => reload(r),
        Command::Check(c) => {
            let cfg = config::load(&c.config, c.role.name())?;
            let queues: Vec<u16> = cfg.queue.numbers().collect();
            println!(
                "{}: a valid {} config (queues {queues:?}, {} protected addresses)",
                c.config.display(),
                c.role.name(),
                cfg.protect.addresses.len()
            );
            Ok(())
        }
        Command::Ports(p) => ports(p),
        Command::Generate { out } => generate(&out),
        Command::Trace(TraceCommand::Format { file, json }) => trace_format(&file, json),
        Command::Trace(TraceCommand::Compare {
            capture,
            traces,
            packets,
            json,
        }) => trace_compare(&capture, &traces, packets, json),
    }
}

fn trace_compare(capture: &Path, traces: &[PathBuf], rows: bool, json: bool) -> Result<()> {
    let traces = traces
        .iter()
        .map(|t| crate::trace::Traced::read(t))
        .collect::<Result<Vec<_>>>()?;
    let bytes = std::fs::read(capture).with_context(|| format!("capture {}", capture.display()))?;
    let c = crate::trace::compare(&traces, &bytes, rows)
        .with_context(|| format!("capture {}", capture.display()))?;
    if json {
        println!("{}", serde_json::to_string(&c)?);
    } else {
        print!("{}", c.text());
    }
    for w in &c.warnings {
        eprintln!("mpolice: trace compare: {w}");
    }
    Ok(())
}

fn trace_format(file: &Path, json: bool) -> Result<()> {
    let how = if json {
        crate::trace::Output::Json
    } else {
        crate::trace::Output::Text
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let summary = if file == Path::new("-") {
        crate::trace::format(std::io::stdin().lock(), &mut out, how)
    } else {
        let f = std::fs::File::open(file).with_context(|| format!("trace {}", file.display()))?;
        crate::trace::format(std::io::BufReader::new(f), &mut out, how)
    }
    .with_context(|| format!("trace {}", file.display()))?;
    std::io::Write::flush(&mut out)?;
    for w in &summary.warnings {
        eprintln!("mpolice: trace {}: {w}", file.display());
    }
    Ok(())
}

fn withhold(w: WithholdArgs) -> Result<()> {
    let prefix = |p: &str| {
        p.parse::<nft::Prefix>()
            .map_err(|e| anyhow::anyhow!("{p:?}: {e}"))
    };
    let request = match &w.op {
        WithholdOp::List => Request::WithholdList,
        WithholdOp::Add { prefix: p } => Request::WithholdAdd(prefix(p)?),
        WithholdOp::Remove { prefix: p } => Request::WithholdRemove(prefix(p)?),
    };
    let answer: Withheld = control::ask(&w.socket, &request)?;
    if !matches!(w.op, WithholdOp::List) {
        println!(
            "{}",
            if answer.changed {
                "changed"
            } else {
                "unchanged"
            }
        );
    }
    for p in &answer.withheld {
        println!("{p}");
    }
    Ok(())
}

fn ports(p: PortsArgs) -> Result<()> {
    let request = match p.op {
        PortsOp::List => PortsRequest::List,
        PortsOp::Forward(ForwardOp::Set { table }) => PortsRequest::ForwardSet(table),
        PortsOp::Forward(ForwardOp::Del { port }) => PortsRequest::ForwardDel(port),
        PortsOp::Forward(ForwardOp::Flush) => PortsRequest::ForwardFlush,
        PortsOp::Group(GroupOp::Add { table }) => PortsRequest::GroupAdd(table),
        PortsOp::Group(GroupOp::Edit { id, table }) => PortsRequest::GroupEdit(id, table),
        PortsOp::Group(GroupOp::Del { id }) => PortsRequest::GroupDel(id),
        PortsOp::Group(GroupOp::Flush) => PortsRequest::GroupFlush,
    };
    // A table over several lines is one line on the control socket.
    let request = match request {
        PortsRequest::ForwardSet(t) => PortsRequest::ForwardSet(one_line(&t)),
        PortsRequest::GroupAdd(t) => PortsRequest::GroupAdd(one_line(&t)),
        PortsRequest::GroupEdit(id, t) => PortsRequest::GroupEdit(id, one_line(&t)),
        other => other,
    };
    let answer: PortsAnswer = control::ask(&p.socket, &Request::Ports(request))?;
    if !answer.changed.is_empty() {
        println!("{}", answer.changed);
    }
    for f in &answer.forward {
        println!("forward {f}");
    }
    for port in &answer.unheard {
        println!("warning: nothing listens on port {port}: connections sent there are reset");
    }
    for g in &answer.groups {
        println!("group {g}");
    }
    Ok(())
}

fn one_line(table: &str) -> String {
    table.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn run_role(role: RoleArg, args: &RunArgs) -> Result<()> {
    let mut cfg = config::load(&args.config, role.name())?;
    if let Some(file) = &args.trace {
        match cfg.trace.as_mut() {
            Some(t) => t.file.clone_from(file),
            None => cfg.trace = Some(config::TraceSettings::all_to(file.clone())),
        }
    }
    if let Some(t) = cfg.trace.as_mut() {
        if args.trace_pcap {
            t.pcap_snap = t.pcap_snap.or(Some(config::DEFAULT_PCAP_SNAP));
        }
        t.kernel |= args.trace_kernel;
    }
    let stats = engine::run((role.into(), role.name()), (&cfg, &args.config))?;
    eprint!("{}", stats.table());
    Ok(())
}

fn rules(cmd: RulesCommand) -> Result<()> {
    match cmd {
        RulesCommand::Install(rc) => {
            let cfg = config::load(&rc.config, rc.role.name())?;
            let spec = cfg.ruleset(rc.role.into());
            let kind = nft::install(&spec, cfg.queue.kind).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "installed table inet {} for {} with the {} queue rule",
                nft::TABLE,
                rc.role.name(),
                engine::kind_name(kind)
            );
        }
        RulesCommand::Remove => {
            let existed = nft::remove(nft::TABLE).map_err(|e| anyhow::anyhow!("{e}"))?;
            if existed {
                println!("removed table inet {}", nft::TABLE);
            } else {
                println!("no table inet {} to remove", nft::TABLE);
            }
        }
        RulesCommand::Show(rc) => {
            let cfg = config::load(&rc.config, rc.role.name())?;
            let spec = cfg.ruleset(rc.role.into());
            print!("{}", nft::render(&spec));
        }
    }
    Ok(())
}

fn stats(args: StatsArgs) -> Result<()> {
    let sockets = if args.socket.is_empty() {
        discover_sockets()?
    } else {
        args.socket
    };
    for path in &sockets {
        let s = control::query(path, args.senders)?;
        if args.json {
            println!("{}", serde_json::to_string(&s)?);
        } else {
            print!("{}", s.table());
            if args.ports {
                print!("{}", s.ports_table());
            }
        }
    }
    Ok(())
}

/// The man pages (one per subcommand) and the bash, zsh and fish completions.
fn generate(out: &Path) -> Result<()> {
    use clap::CommandFactory;
    let man = out.join("man1");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).context("man pages")?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "mpolice", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    println!(
        "man pages in {}, completions in {}",
        man.display(),
        completions.display()
    );
    Ok(())
}

fn reload(args: ReloadArgs) -> Result<()> {
    let sockets = if args.socket.is_empty() {
        discover_sockets()?
    } else {
        args.socket
    };
    for path in &sockets {
        let r: crate::driver::reload::Reloaded = control::ask(path, &control::Request::Reload)?;
        if r.changed.is_empty() {
            println!("{}: reloaded {}: nothing changed", path.display(), r.file);
        }
        for c in &r.changed {
            println!("{}: reloaded {}: {c}", path.display(), r.file);
        }
        for port in &r.unheard {
            println!("warning: nothing listens on port {port}: connections sent there are reset");
        }
    }
    Ok(())
}

fn discover_sockets() -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = match std::fs::read_dir(RUN_DIR) {
        Ok(dir) => dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sock"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("read {RUN_DIR}")),
    };
    if found.is_empty() {
        bail!(
            "no engine sockets in {RUN_DIR}; is `mpolice mbox|victim` running? (or pass --socket)"
        );
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator-readable rulesets in nft-rules/ are what `rules show` prints.
    #[test]
    fn nft_rules_files_match_the_example_configs() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for arg in [RoleArg::Mbox, RoleArg::Victim, RoleArg::Server] {
            let role = arg.name();
            let cfg = config::load(&root.join(format!("examples/{role}.toml")), role).unwrap();
            let text = nft::render(&cfg.ruleset(arg.into()));
            let file = root.join(format!("nft-rules/{role}.nft"));
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                committed == text,
                "{} is stale; regenerate it with\n  cargo run -- rules show --role {role} \
                 --config examples/{role}.toml > nft-rules/{role}.nft",
                file.display()
            );
        }
    }

    #[test]
    fn trace_format_names_the_file_it_cannot_read() {
        let dir = std::env::temp_dir().join(format!("mpolice-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.trace");
        std::fs::write(&garbage, b"\x00\x01 not json\n").unwrap();
        let missing = dir.join("missing.trace");
        for (file, says) in [
            (&garbage, "not an mpolice trace header"),
            (&missing, "No such file"),
        ] {
            let e = format!("{:#}", trace_format(file, false).unwrap_err());
            assert!(
                e.contains(&file.display().to_string()) && e.contains(says),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_subcommand_has_help() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        for sub in Cli::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
        }
    }
}
