//! The mbox's `[police]` section: which policy sets the windows, and its thresholds.

use serde::Deserialize;

use super::ConfigError;
use crate::driver::nft::Prefix;
use crate::police::Policy;

/// How the mbox polices senders (SPEC.md "Policing"); the period, Th_rtt, Th_cap and
/// table size are the capability settings'.
#[derive(Debug, Clone, PartialEq)]
pub struct PoliceSettings {
    pub policy: Policy,
    /// β: weight of the past in the long-term loss rate.
    pub beta: f64,
    /// A sender's best-effort packets are dropped while its LLR is above this.
    pub llr_threshold: f64,
    /// Every sender's best-effort packets are dropped while the SLR is above this.
    pub slr_threshold: f64,
    /// Returned-or-lost capabilities the SLR needs before it counts.
    pub slr_sample: u32,
    /// Non-TCP packets (and TCP to unprotected ports) per sender per period at most.
    pub non_tcp_per_period: u32,
    /// Stamps per second per worker on senders no capability has come back from yet.
    pub unverified_stamps_per_sec: u32,
    /// Periods in a row without a packet after which a sender is forgotten.
    pub idle_periods: u32,
    /// In the kernel, before the queue: packets per second (and burst) each unverified
    /// source may send to the engine, all unverified sources together, and how many
    /// bits of an IPv6 address name a source.
    pub unverified: crate::driver::nft::UnverifiedLimits,
    /// WR is spent at the period's pace (`window = "paced"`), not all at once.
    pub paced: bool,
}

impl PoliceSettings {
    /// The prototype's values (SPEC.md) with `policy`.
    pub fn with_policy(policy: Policy) -> Self {
        PoliceSettings {
            policy,
            beta: 0.8,
            llr_threshold: 0.05,
            slr_threshold: 0.05,
            slr_sample: 128,
            non_tcp_per_period: 1000,
            unverified_stamps_per_sec: 1000,
            idle_periods: 4,
            unverified: crate::driver::nft::UnverifiedLimits {
                per_source_pps: 50,
                per_source_burst: 100,
                total_pps: 20_000,
                total_burst: 20_000,
                v6_source_prefix: 64,
            },
            paced: true,
        }
    }

    /// Measure, never drop: what the mbox does without a `[police]` section.
    pub fn off() -> Self {
        Self::with_policy(Policy::Off)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolice {
    policy: String,
    beta: Option<f64>,
    llr_threshold: Option<f64>,
    slr_threshold: Option<f64>,
    slr_sample: Option<u32>,
    non_tcp_per_period: Option<u32>,
    unverified_stamps_per_sec: Option<u32>,
    idle_periods: Option<u32>,
    unverified_per_source_pps: Option<u32>,
    unverified_per_source_burst: Option<u32>,
    unverified_total_pps: Option<u32>,
    unverified_total_burst: Option<u32>,
    unverified_v6_source_prefix: Option<u8>,
    #[serde(default)]
    premium: Vec<String>,
    premium_share: Option<f64>,
    window: Option<String>,
}

pub(super) fn validate(r: RawPolice) -> Result<PoliceSettings, ConfigError> {
    let err = |m: String| Err(ConfigError(format!("police.{m}")));
    let premium = r
        .premium
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<Prefix>()
                .map_err(|e| ConfigError(format!("police.premium[{i}]: {a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let priority = r.policy == "priority";
    if !priority && (!premium.is_empty() || r.premium_share.is_some()) {
        return err("premium: only the priority policy names premium senders".into());
    }
    let policy = match r.policy.as_str() {
        "off" => Policy::Off,
        "natural_share" => Policy::NaturalShare,
        "fair_share" => Policy::FairShare,
        "priority" if premium.is_empty() => {
            return err("premium: the priority policy needs at least one sender or prefix".into());
        }
        "priority" => {
            let share = r.premium_share.unwrap_or(0.5);
            if !(share > 0.0 && share < 1.0) {
                return err(format!("premium_share: {share} is not between 0 and 1"));
            }
            Policy::Priority { premium, share }
        }
        other => {
            return err(format!(
                "policy: unknown policy {other:?}; use \"natural_share\", \"fair_share\", \"priority\" or \"off\""
            ));
        }
    };
    let paced = match r.window.as_deref() {
        None | Some("paced") => true,
        Some("per_period") => false,
        Some(other) => {
            return err(format!(
                "window: unknown value {other:?}; use \"paced\" or \"per_period\""
            ));
        }
    };
    let d = PoliceSettings::with_policy(policy);
    let u = d.unverified;
    let unverified = crate::driver::nft::UnverifiedLimits {
        per_source_pps: r.unverified_per_source_pps.unwrap_or(u.per_source_pps),
        per_source_burst: r.unverified_per_source_burst.unwrap_or(u.per_source_burst),
        total_pps: r.unverified_total_pps.unwrap_or(u.total_pps),
        total_burst: r.unverified_total_burst.unwrap_or(u.total_burst),
        v6_source_prefix: r.unverified_v6_source_prefix.unwrap_or(u.v6_source_prefix),
    };
    if let Err(e) = unverified.validate() {
        return err(format!("unverified_*: {e}"));
    }
    let beta = r.beta.unwrap_or(d.beta);
    if !(0.0..1.0).contains(&beta) {
        return err(format!(
            "beta: {beta} is not in 0..1 (0 forgets the past at once; 1 would never learn)"
        ));
    }
    let fraction = |key: &str, v: Option<f64>, default: f64| match v.unwrap_or(default) {
        x if x > 0.0 && x <= 1.0 => Ok(x),
        x => Err(ConfigError(format!("police.{key}: {x} is not in (0, 1]"))),
    };
    let at_least_one = |key: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        0 => Err(ConfigError(format!("police.{key}: must be at least 1"))),
        x => Ok(x),
    };
    Ok(PoliceSettings {
        paced,
        beta,
        llr_threshold: fraction("llr_threshold", r.llr_threshold, d.llr_threshold)?,
        slr_threshold: fraction("slr_threshold", r.slr_threshold, d.slr_threshold)?,
        slr_sample: at_least_one("slr_sample", r.slr_sample, d.slr_sample)?,
        non_tcp_per_period: r.non_tcp_per_period.unwrap_or(d.non_tcp_per_period),
        unverified_stamps_per_sec: at_least_one(
            "unverified_stamps_per_sec",
            r.unverified_stamps_per_sec,
            d.unverified_stamps_per_sec,
        )?,
        idle_periods: at_least_one("idle_periods", r.idle_periods, d.idle_periods)?,
        unverified,
        policy: d.policy,
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    const BASE: &str = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[capabilities]\nkey_file=\"/k\"\n[police]\n";

    fn police(extra: &str) -> Result<PoliceSettings, String> {
        parse(&format!("{BASE}{extra}"), "mbox")
            .map(|c| c.police)
            .map_err(|e| e.to_string())
    }

    /// The stats name a policy by the word its config uses.
    #[test]
    fn a_policy_is_named_by_its_config_word() {
        for word in ["off", "natural_share", "fair_share", "priority"] {
            let premium = if word == "priority" {
                "\npremium=[\"198.18.1.0/24\"]"
            } else {
                ""
            };
            let p = police(&format!("policy=\"{word}\"{premium}")).unwrap();
            assert_eq!(p.policy.name(), word);
        }
    }

    #[test]
    fn defaults_are_the_prototypes() {
        let p = police("policy=\"natural_share\"").unwrap();
        assert_eq!(p, PoliceSettings::with_policy(Policy::NaturalShare));
        assert_eq!(
            (p.beta, p.llr_threshold, p.slr_threshold),
            (0.8, 0.05, 0.05)
        );
        assert_eq!(p.slr_sample, 128);
        assert!(p.paced, "windows are paced unless asked otherwise");
        let per_period = police("policy=\"natural_share\"\nwindow=\"per_period\"").unwrap();
        assert!(!per_period.paced);
        let c = parse(BASE.trim_end_matches("[police]\n"), "mbox").unwrap();
        assert_eq!(c.police, PoliceSettings::off(), "no section: measure only");
    }

    #[test]
    fn priority_names_its_premium_senders() {
        let p =
            police("policy=\"priority\"\npremium=[\"198.18.1.0/24\"]\npremium_share=0.3").unwrap();
        assert!(p.policy.is_premium("198.18.1.9".parse().unwrap()));
        assert!(matches!(p.policy, Policy::Priority { share, .. } if share == 0.3));
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        for (extra, expect) in [
            ("policy=\"fastest\"", "police.policy: unknown policy"),
            ("policy=\"natural_share\"\nbeta=1.0", "police.beta"),
            ("policy=\"natural_share\"\nbeta=-0.1", "police.beta"),
            (
                "policy=\"natural_share\"\nllr_threshold=0",
                "police.llr_threshold",
            ),
            (
                "policy=\"natural_share\"\nslr_threshold=1.5",
                "police.slr_threshold",
            ),
            (
                "policy=\"natural_share\"\nslr_sample=0",
                "police.slr_sample",
            ),
            (
                "policy=\"natural_share\"\nidle_periods=0",
                "police.idle_periods",
            ),
            (
                "policy=\"natural_share\"\nunverified_stamps_per_sec=0",
                "police.unverified_stamps_per_sec",
            ),
            (
                "policy=\"priority\"",
                "police.premium: the priority policy needs",
            ),
            (
                "policy=\"priority\"\npremium=[\"198.18.1.0/24\"]\npremium_share=1",
                "police.premium_share",
            ),
            (
                "policy=\"priority\"\npremium=[\"198.18.1.0/33\"]",
                "police.premium[0]",
            ),
            (
                "policy=\"fair_share\"\npremium=[\"198.18.1.0/24\"]",
                "only the priority policy",
            ),
            ("policy=\"fair_share\"\nperiod_ms=4000", "unknown field"),
            (
                "policy=\"fair_share\"\nwindow=\"bursty\"",
                "police.window: unknown value",
            ),
            (
                "policy=\"fair_share\"\nunverified_v6_source_prefix=0",
                "v6_source_prefix = 0 must be 1 to 128",
            ),
            (
                "policy=\"fair_share\"\nunverified_v6_source_prefix=129",
                "v6_source_prefix = 129 must be 1 to 128",
            ),
            (
                "policy=\"fair_share\"\nunverified_per_source_pps=0",
                "per_source_pps = 0 must be 1 to",
            ),
        ] {
            let e = police(extra).unwrap_err();
            assert!(e.contains(expect), "{extra}: {e}");
        }
    }

    #[test]
    fn only_an_mbox_with_capabilities_polices() {
        let e = parse(&format!("{BASE}policy=\"fair_share\""), "victim")
            .unwrap_err()
            .to_string();
        assert!(e.contains("police: only the mbox polices"), "{e}");
        let no_caps = "[protect]\naddresses=[\"198.18.2.2\"]\ntcp_ports=[80]\n[police]\npolicy=\"fair_share\"";
        let e = parse(no_caps, "mbox").unwrap_err().to_string();
        assert!(
            e.contains("police: needs the [capabilities] section"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod example_tests {
    use super::super::parse;
    use crate::police::Policy;

    #[test]
    fn the_example_configs_load() {
        let mbox = parse(include_str!("../../examples/mbox.toml"), "mbox").unwrap();
        assert_eq!(mbox.police.policy, Policy::NaturalShare);
        parse(include_str!("../../examples/victim.toml"), "victim").unwrap();
    }
}
