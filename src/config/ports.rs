//! The `[ports]` section: port policies on the server they protect (see
//! `crate::ports`). Each `[[ports.forward]]` is one incoming port's rule.

use serde::Deserialize;

use super::ConfigError;
use crate::driver::nft::{PortRange, Prefix};
use crate::ports::{Branches, ForwardRule};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPorts {
    #[serde(default)]
    forward: Vec<RawForward>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    port: i64,
    default: i64,
    source: Option<Vec<RawSource>>,
    dice: Option<Vec<RawDice>>,
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

/// Check the rules: real ports, one rule per incoming port, each on a protected TCP
/// port (the engine sees no other SYNs), one kind of branch, shares that add up.
pub(super) fn validate(
    raw: RawPorts,
    protected_tcp: &[PortRange],
) -> Result<Vec<ForwardRule>, ConfigError> {
    let mut rules: Vec<ForwardRule> = Vec::new();
    for (i, f) in raw.forward.into_iter().enumerate() {
        let key = format!("ports.forward[{i}]");
        let port = port_number(&format!("{key}.port"), f.port)?;
        let default = port_number(&format!("{key}.default"), f.default)?;
        if rules.iter().any(|r| r.port == port) {
            return Err(ConfigError(format!(
                "{key}.port: port {port} has a rule already; one rule per incoming port"
            )));
        }
        if !protected_tcp.iter().any(|r| r.contains(port)) {
            return Err(ConfigError(format!(
                "{key}.port: {port} is not in protect.tcp_ports, so its connections never reach the engine"
            )));
        }
        let branches = match (f.source, f.dice) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(format!(
                    "{key}: a rule forwards by source or by dice, not both; make two rules on two ports"
                )));
            }
            (Some(sources), None) => Branches::Source(by_source(&key, sources)?),
            (None, Some(dice)) => Branches::Dice(by_dice(&key, dice)?),
            (None, None) => Branches::Source(Vec::new()),
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
                "by source or by dice, not both",
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
