//! The `[ports]` section: port policies on the server they protect (see
//! `crate::ports`). Each `[[ports.forward]]` is one incoming port's rule.

use serde::Deserialize;

use super::ConfigError;
use crate::driver::nft::{PortRange, Prefix};
use crate::ports::{Branches, ForwardRule, GroupKind, GroupSpec, Over};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPorts {
    #[serde(default)]
    forward: Vec<RawForward>,
    #[serde(default)]
    group: Vec<RawGroup>,
}

/// One traffic group: one of `accept_rate`, `accept_ratio` or `output_rate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    accept_rate: Option<f64>,
    accept_ratio: Option<f64>,
    output_rate: Option<f64>,
    port: Option<i64>,
    ports: Option<Vec<RawShare>>,
    burst: Option<f64>,
    over: Option<Over>,
    ftp: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShare {
    port: i64,
    share: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    port: i64,
    default: i64,
    source: Option<Vec<RawSource>>,
    dice: Option<Vec<RawDice>>,
    content: Option<Vec<RawContent>>,
}

/// A content branch: a text `pattern` or the bytes of `hex`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContent {
    pattern: Option<String>,
    hex: Option<String>,
    to: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    from: String,
    to: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDice {
    percent: i64,
    to: i64,
}

/// The port policies of a `[ports]` section.
pub(super) struct Policies {
    pub forward: Vec<ForwardRule>,
    pub groups: Vec<GroupSpec>,
}

/// Check the section: its forwarding rules and its groups.
pub(super) fn validate(
    raw: RawPorts,
    protected_tcp: &[PortRange],
    by_flow: bool,
) -> Result<Policies, ConfigError> {
    let protected = protection(protected_tcp);
    let groups = raw
        .group
        .into_iter()
        .enumerate()
        .map(|(i, g)| group(&format!("ports.group[{i}]"), g, &protected))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Policies {
        forward: forward_rules(raw.forward, &protected, by_flow)?,
        groups,
    })
}

/// The check that a port is protected: the engine sees no other port's connections.
fn protection(protected_tcp: &[PortRange]) -> impl Fn(&str, u16) -> Result<u16, ConfigError> + '_ {
    move |key: &str, port: u16| {
        if protected_tcp.iter().any(|r| r.contains(port)) {
            Ok(port)
        } else {
            Err(ConfigError(format!(
                "{key}: {port} is not in protect.tcp_ports, so its connections never reach the engine"
            )))
        }
    }
}

/// Check the forwarding rules: real ports, one rule per incoming port, each on a
/// protected TCP port, one kind of branch, shares that add up; content rules only when
/// the queues are balanced `by_flow` (a connection's packets both ways meet one worker,
/// which holds its translation).
fn forward_rules(
    raw: Vec<RawForward>,
    protected: &dyn Fn(&str, u16) -> Result<u16, ConfigError>,
    by_flow: bool,
) -> Result<Vec<ForwardRule>, ConfigError> {
    let mut rules: Vec<ForwardRule> = Vec::new();
    for (i, f) in raw.into_iter().enumerate() {
        let key = format!("ports.forward[{i}]");
        let port = port_number(&format!("{key}.port"), f.port)?;
        let default = port_number(&format!("{key}.default"), f.default)?;
        if rules.iter().any(|r| r.port == port) {
            return Err(ConfigError(format!(
                "{key}.port: port {port} has a rule already; one rule per incoming port"
            )));
        }
        protected(&format!("{key}.port"), port)?;
        let branches = match (f.source, f.dice, f.content) {
            (Some(sources), None, None) => Branches::Source(by_source(&key, sources)?),
            (None, Some(dice), None) => Branches::Dice(by_dice(&key, dice)?),
            (None, None, Some(_)) if !by_flow => {
                return Err(ConfigError(format!(
                    "{key}.content: content rules need the queues balanced by flow (queue.fanout = false): a connection's packets both ways must meet the worker that holds it"
                )));
            }
            (None, None, Some(content)) => Branches::Content(by_content(&key, content)?),
            (None, None, None) => Branches::Source(Vec::new()),
            _ => {
                return Err(ConfigError(format!(
                    "{key}: a rule forwards by one of source, dice or content; make two rules on two ports"
                )));
            }
        };
        let rule = ForwardRule {
            port,
            default,
            branches,
        };
        if rule.outgoing() == [port] {
            return Err(ConfigError(format!(
                "{key}: every connection would stay on port {port}; name another default or a branch"
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// One group: its kind, its port or ports (protected), a rate over 0, a burst of at
/// least 1, and what happens past the quota.
fn group(
    key: &str,
    g: RawGroup,
    protected: &dyn Fn(&str, u16) -> Result<u16, ConfigError>,
) -> Result<GroupSpec, ConfigError> {
    let rate = |name: &str, r: f64| {
        if r.is_finite() && r > 0.0 {
            Ok(r)
        } else {
            Err(ConfigError(format!(
                "{key}.{name}: {r} is not a rate over 0"
            )))
        }
    };
    let burst = |default: f64| match g.burst {
        Some(b) if !(b.is_finite() && b >= 1.0) => {
            Err(ConfigError(format!("{key}.burst: {b} is not at least 1")))
        }
        Some(b) => Ok(b),
        None => Ok(default.max(1.0)),
    };
    let one_port = || -> Result<u16, ConfigError> {
        let p = g
            .port
            .ok_or_else(|| ConfigError(format!("{key}.port: name the group's port")))?;
        protected(
            &format!("{key}.port"),
            port_number(&format!("{key}.port"), p)?,
        )
    };
    let over = g.over.unwrap_or(Over::Hold);
    if g.ftp.is_some() && g.output_rate.is_none() {
        return Err(ConfigError(format!(
            "{key}.ftp: only an output group counts an FTP server's data connections"
        )));
    }
    let kind = match (g.accept_rate, g.accept_ratio, g.output_rate) {
        (Some(r), None, None) => {
            let rate = rate("accept_rate", r)?;
            GroupKind::AcceptRate {
                port: one_port()?,
                rate,
                burst: burst(rate)?,
            }
        }
        (None, Some(r), None) => {
            let rate = rate("accept_ratio", r)?;
            let shares = g.ports.unwrap_or_default();
            if shares.len() < 2 {
                return Err(ConfigError(format!(
                    "{key}.ports: a ratio is shared by two ports or more"
                )));
            }
            let mut ports: Vec<(u16, u32)> = Vec::new();
            for (j, s) in shares.into_iter().enumerate() {
                let at = format!("{key}.ports[{j}]");
                let port = protected(
                    &format!("{at}.port"),
                    port_number(&format!("{at}.port"), s.port)?,
                )?;
                if ports.iter().any(|&(p, _)| p == port) {
                    return Err(ConfigError(format!("{at}.port: {port} is named twice")));
                }
                let share = u32::try_from(s.share)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "{at}.share: {} is not a share of 1 or more",
                            s.share
                        ))
                    })?;
                ports.push((port, share));
            }
            GroupKind::AcceptRatio {
                ports,
                rate,
                burst: burst(rate)?,
            }
        }
        (None, None, Some(r)) => {
            if over == Over::Refuse {
                return Err(ConfigError(format!(
                    "{key}.over: output past its quota can only be held back (\"hold\")"
                )));
            }
            let rate = rate("output_rate", r)?;
            // A tenth of a second of output by default; at least a GSO super-packet's
            // payload, which is metered whole and could never pass a smaller burst.
            let burst = burst((rate / 10.0).max(MIN_OUTPUT_BURST))?;
            if burst < MIN_OUTPUT_BURST {
                return Err(ConfigError(format!(
                    "{key}.burst: {burst} bytes; an output group's burst is at least {MIN_OUTPUT_BURST} (a GSO super-packet's payload)"
                )));
            }
            GroupKind::OutputRate {
                port: one_port()?,
                rate,
                burst,
                ftp: g.ftp.unwrap_or(false),
            }
        }
        _ => {
            return Err(ConfigError(format!(
                "{key}: name one of accept_rate, accept_ratio or output_rate"
            )));
        }
    };
    Ok(GroupSpec { kind, over })
}

/// One forwarding rule given as a TOML inline table (`mpolice ports forward set`),
/// checked as the config's are against the protected TCP ports and the queues' balance
/// (`by_flow`).
pub fn parse_forward(
    inline: &str,
    protected_tcp: &[PortRange],
    by_flow: bool,
) -> Result<ForwardRule, ConfigError> {
    #[derive(Deserialize)]
    struct One {
        rule: RawForward,
    }
    let one: One = inline_table("rule", inline)?;
    let protected = protection(protected_tcp);
    Ok(forward_rules(vec![one.rule], &protected, by_flow)?.remove(0))
}

/// One group given as a TOML inline table (`mpolice ports group add`), checked as the
/// config's are.
pub fn parse_group(inline: &str, protected_tcp: &[PortRange]) -> Result<GroupSpec, ConfigError> {
    #[derive(Deserialize)]
    struct One {
        group: RawGroup,
    }
    let one: One = inline_table("group", inline)?;
    group("group", one.group, &protection(protected_tcp))
}

/// `{ ... }` read as the value of `key`, the one key of a TOML document.
fn inline_table<T: serde::de::DeserializeOwned>(key: &str, inline: &str) -> Result<T, ConfigError> {
    toml::from_str(&format!("{key} = {inline}")).map_err(|e| {
        ConfigError(format!(
            "{inline:?} is not a TOML inline table of the rule: {}",
            e.message()
        ))
    })
}

/// The smallest burst of an output group, in bytes.
const MIN_OUTPUT_BURST: f64 = 65_536.0;

fn by_source(key: &str, sources: Vec<RawSource>) -> Result<Vec<(Prefix, u16)>, ConfigError> {
    let mut out: Vec<(Prefix, u16)> = Vec::new();
    for (j, s) in sources.into_iter().enumerate() {
        let at = format!("{key}.source[{j}]");
        let prefix = s
            .from
            .parse::<Prefix>()
            .map_err(|e| ConfigError(format!("{at}.from: {:?}: {e}", s.from)))?;
        if out.iter().any(|(p, _)| *p == prefix) {
            return Err(ConfigError(format!(
                "{at}.from: {prefix} is named twice; a narrower prefix inside a wider one is how to make an exception"
            )));
        }
        out.push((prefix, port_number(&format!("{at}.to"), s.to)?));
    }
    Ok(out)
}

/// The longest content pattern: it must fit in a connection's first segment.
pub const MAX_PATTERN: usize = 256;

fn by_content(key: &str, content: Vec<RawContent>) -> Result<Vec<(Vec<u8>, u16)>, ConfigError> {
    let mut out: Vec<(Vec<u8>, u16)> = Vec::new();
    for (j, c) in content.into_iter().enumerate() {
        let at = format!("{key}.content[{j}]");
        let pattern = match (c.pattern, c.hex) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(hex)) => from_hex(&hex).ok_or_else(|| {
                ConfigError(format!("{at}.hex: {hex:?} is not pairs of hex digits"))
            })?,
            _ => {
                return Err(ConfigError(format!(
                    "{at}: name the bytes to find as pattern (text) or hex, one of the two"
                )));
            }
        };
        if pattern.is_empty() || pattern.len() > MAX_PATTERN {
            return Err(ConfigError(format!(
                "{at}: a pattern of {} bytes; it holds 1 to {MAX_PATTERN}",
                pattern.len()
            )));
        }
        if out.iter().any(|(p, _)| *p == pattern) {
            return Err(ConfigError(format!(
                "{at}: the pattern is named twice; the first branch that finds its pattern takes the connection"
            )));
        }
        out.push((pattern, port_number(&format!("{at}.to"), c.to)?));
    }
    if out.is_empty() {
        return Err(ConfigError(format!(
            "{key}.content: no branch; leave content out to send every connection to the default"
        )));
    }
    Ok(out)
}

/// The bytes of hex digit pairs (spaces between pairs allowed), None if it is not that.
fn from_hex(hex: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b' ').collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

fn by_dice(key: &str, dice: Vec<RawDice>) -> Result<Vec<(u8, u16)>, ConfigError> {
    let mut out = Vec::new();
    let mut total = 0i64;
    for (j, d) in dice.into_iter().enumerate() {
        let at = format!("{key}.dice[{j}]");
        if !(1..=100).contains(&d.percent) {
            return Err(ConfigError(format!(
                "{at}.percent: {} is not a share from 1 to 100",
                d.percent
            )));
        }
        total += d.percent;
        out.push((d.percent as u8, port_number(&format!("{at}.to"), d.to)?));
    }
    if total > 100 {
        return Err(ConfigError(format!(
            "{key}.dice: the shares add up to {total}, over 100"
        )));
    }
    if out.is_empty() {
        return Err(ConfigError(format!(
            "{key}.dice: no branch; leave dice out to send every connection to the default"
        )));
    }
    Ok(out)
}

fn port_number(key: &str, n: i64) -> Result<u16, ConfigError> {
    u16::try_from(n)
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| ConfigError(format!("{key}: {n} is not a port (1 to 65535)")))
}

#[cfg(test)]
mod tests {
    use crate::config::parse;
    use crate::ports::Branches;

    const BASE: &str = "[protect]\naddresses = [\"198.18.2.2\"]\ntcp_ports = [8080, 9000]\n";

    fn groups(extra: &str) -> Result<Vec<crate::ports::GroupSpec>, String> {
        parse(&format!("{BASE}{extra}"), "victim")
            .map(|c| c.groups)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn traffic_groups_load_with_their_defaults() {
        use crate::ports::{GroupKind, Over};
        let g = groups(
            "[[ports.group]]\naccept_rate = 20\nport = 8080\nover = \"refuse\"\n\
             [[ports.group]]\naccept_ratio = 30\nports = [{ port = 8080, share = 2 }, { port = 9000, share = 1 }]\n\
             [[ports.group]]\noutput_rate = 1e6\nport = 9000\n",
        )
        .unwrap();
        assert_eq!(
            g[0].kind,
            GroupKind::AcceptRate {
                port: 8080,
                rate: 20.0,
                burst: 20.0
            }
        );
        assert_eq!(g[0].over, Over::Refuse);
        assert!(
            matches!(&g[1].kind, GroupKind::AcceptRatio { ports, rate, .. } if ports == &[(8080, 2), (9000, 1)] && *rate == 30.0)
        );
        assert_eq!(g[1].over, Over::Hold);
        assert_eq!(
            g[2].kind,
            GroupKind::OutputRate {
                port: 9000,
                rate: 1e6,
                burst: 100_000.0,
                ftp: false,
            }
        );
    }

    #[test]
    fn bad_groups_are_refused_by_name() {
        for (body, says) in [
            (
                "port = 8080",
                "name one of accept_rate, accept_ratio or output_rate",
            ),
            (
                "accept_rate = 1\noutput_rate = 1\nport = 8080",
                "name one of",
            ),
            (
                "accept_rate = 0\nport = 8080",
                "ports.group[0].accept_rate: 0 is not a rate over 0",
            ),
            ("accept_rate = -3\nport = 8080", "accept_rate: -3"),
            (
                "accept_rate = 5",
                "ports.group[0].port: name the group's port",
            ),
            (
                "accept_rate = 5\nport = 7",
                "ports.group[0].port: 7 is not in protect.tcp_ports",
            ),
            (
                "accept_rate = 5\nport = 8080\nburst = 0.5",
                "burst: 0.5 is not at least 1",
            ),
            (
                "accept_rate = 5\nport = 8080\nover = \"later\"",
                "unknown variant `later`",
            ),
            (
                "accept_ratio = 5\nports = [{ port = 8080, share = 1 }]",
                "two ports or more",
            ),
            (
                "accept_ratio = 5\nports = [{ port = 8080, share = 1 }, { port = 8080, share = 2 }]",
                "ports[1].port: 8080 is named twice",
            ),
            (
                "accept_ratio = 5\nports = [{ port = 8080, share = 0 }, { port = 9000, share = 2 }]",
                "ports[0].share: 0 is not a share",
            ),
            (
                "output_rate = 1000\nport = 8080\nover = \"refuse\"",
                "can only be held back",
            ),
            (
                "output_rate = 1e6\nport = 8080\nburst = 1500",
                "at least 65536",
            ),
            (
                "accept_rate = 5\nport = 8080\nftp = true",
                "ports.group[0].ftp: only an output group",
            ),
        ] {
            let e = groups(&format!("[[ports.group]]\n{body}\n")).unwrap_err();
            assert!(e.contains(says), "{body:?}: {e}");
        }
    }

    fn rules(extra: &str) -> Result<Vec<crate::ports::ForwardRule>, String> {
        parse(&format!("{BASE}{extra}"), "victim")
            .map(|c| c.ports)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn forwarding_rules_by_source_and_by_dice_load() {
        let r = rules(
            "[[ports.forward]]\nport = 8080\ndefault = 8082\nsource = [{ from = \"198.18.1.0/24\", to = 8081 }]\n\
             [[ports.forward]]\nport = 9000\ndefault = 9000\ndice = [{ percent = 30, to = 9001 }, { percent = 70, to = 9002 }]\n",
        )
        .unwrap();
        assert_eq!((r[0].port, r[0].default), (8080, 8082));
        assert!(matches!(&r[0].branches, Branches::Source(b) if b.len() == 1));
        assert!(matches!(&r[1].branches, Branches::Dice(b) if b == &[(30, 9001), (70, 9002)]));
        let c = rules(
            "[[ports.forward]]\nport = 8080\ndefault = 8082\n\
             content = [{ pattern = \"GET /api\", to = 8081 }, { hex = \"16 03 01\", to = 8443 }]\n",
        )
        .unwrap();
        assert!(
            matches!(&c[0].branches, Branches::Content(b) if b == &[(b"GET /api".to_vec(), 8081), (vec![0x16, 3, 1], 8443)])
        );
        assert_eq!(
            rules(&format!(
                "[[ports.forward]]\nport = 8080\ndefault = 1\ncontent = [{{ pattern = \"{}\", to = 2 }}]\n",
                "x".repeat(257)
            ))
            .unwrap_err(),
            "ports.forward[0].content[0]: a pattern of 257 bytes; it holds 1 to 256"
        );
        // No branches: every connection to the default.
        let all = rules("[[ports.forward]]\nport = 8080\ndefault = 8081\n").unwrap();
        assert_eq!(all[0].outgoing(), [8081]);
        assert!(rules("").unwrap().is_empty());
    }

    #[test]
    fn bad_forwarding_rules_are_refused_by_name() {
        let rule = |body: &str| format!("[[ports.forward]]\n{body}\n");
        for (body, says) in [
            (
                "port = 0\ndefault = 1",
                "ports.forward[0].port: 0 is not a port",
            ),
            (
                "port = 8080\ndefault = 70000",
                "ports.forward[0].default: 70000",
            ),
            (
                "port = 8081\ndefault = 8082",
                "8081 is not in protect.tcp_ports",
            ),
            (
                "port = 8080\ndefault = 8080",
                "every connection would stay on port 8080",
            ),
            (
                "port = 8080\ndefault = 1\nsource = [{ from = \"198.18.0.0/33\", to = 2 }]",
                "ports.forward[0].source[0].from",
            ),
            (
                "port = 8080\ndefault = 1\nsource = [{ from = \"198.18.0.0/16\", to = 2 }, { from = \"198.18.0.0/16\", to = 3 }]",
                "198.18.0.0/16 is named twice",
            ),
            (
                "port = 8080\ndefault = 1\nsource = [{ from = \"198.18.0.0/16\", to = 0 }]",
                "ports.forward[0].source[0].to: 0",
            ),
            ("port = 8080\ndefault = 1\ndice = []", "no branch"),
            (
                "port = 8080\ndefault = 1\ndice = [{ percent = 0, to = 2 }]",
                "dice[0].percent: 0 is not a share",
            ),
            (
                "port = 8080\ndefault = 1\ndice = [{ percent = 60, to = 2 }, { percent = 50, to = 3 }]",
                "add up to 110, over 100",
            ),
            (
                "port = 8080\ndefault = 1\ndice = [{ percent = 10, to = 2 }]\nsource = []",
                "by one of source, dice or content",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ pattern = \"x\", to = 2 }]\nsource = []",
                "by one of source, dice or content",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = []",
                "content: no branch",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ pattern = \"\", to = 2 }]",
                "content[0]: a pattern of 0 bytes; it holds 1 to 256",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ to = 2 }]",
                "content[0]: name the bytes to find as pattern (text) or hex",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ pattern = \"a\", hex = \"61\", to = 2 }]",
                "one of the two",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ hex = \"6g\", to = 2 }]",
                "content[0].hex: \"6g\" is not pairs of hex digits",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ hex = \"616\", to = 2 }]",
                "not pairs of hex digits",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ pattern = \"a\", to = 2 }, { hex = \"61\", to = 3 }]",
                "content[1]: the pattern is named twice",
            ),
            (
                "port = 8080\ndefault = 1\ncontent = [{ pattern = \"x\", to = 70000 }]",
                "content[0].to: 70000",
            ),
            (
                "port = 8080\ndefault = 1\nratio = 2",
                "unknown field `ratio`",
            ),
        ] {
            let e = rules(&rule(body)).unwrap_err();
            assert!(e.contains(says), "{body:?}: {e}");
        }
        let twice = format!(
            "{}{}",
            rule("port = 8080\ndefault = 1"),
            rule("port = 8080\ndefault = 2")
        );
        assert!(rules(&twice).unwrap_err().contains("has a rule already"));
        let fanout = parse(
            &format!(
                "{BASE}[queue]\nfanout = true\n[[ports.forward]]\nport = 8080\ndefault = 1\ncontent = [{{ pattern = \"x\", to = 2 }}]\n"
            ),
            "victim",
        )
        .unwrap_err()
        .to_string();
        assert!(
            fanout.contains(
                "ports.forward[0].content: content rules need the queues balanced by flow"
            ),
            "{fanout}"
        );
        let mbox = parse(
            &format!("{BASE}[[ports.forward]]\nport = 8080\ndefault = 1\n"),
            "mbox",
        )
        .unwrap_err()
        .to_string();
        assert!(
            mbox.contains("ports: port policies run on the server"),
            "{mbox}"
        );
    }
}
