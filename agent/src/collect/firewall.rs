//! The host firewall, read from the nftables ruleset (`nft -j list ruleset`) or, failing that,
//! from `iptables-save`.
//!
//! - Input-hook chains are the base chains of type `filter` on the `input` hook in the `ip`, `ip6`
//!   and `inet` families (iptables: the `INPUT` chain of the `filter` table).
//! - `rules` counts the rules in those chains; `default_deny` says whether one of them has a
//!   `drop` (or `reject`) policy; `active` whether the firewall filters: a default deny, or a
//!   `drop`/`reject` verdict in an input chain or in a chain it jumps to.
//! - An empty ruleset is a value (no firewall), not an unknown. Unknown means neither tool could be
//!   run or read: not installed, not permitted (both need root), timed out, unparsable output.

use std::collections::{HashMap, HashSet};

use protocols::telemetry::{Firewall, FirewallBackend, Reading};
use serde_json::Value;

use super::files::unknown;
use super::run::{run, Limits, RunError};

/// How deep the JSON of one rule is searched for verdicts (nft's expressions nest a few levels).
const MAX_EXPR_DEPTH: usize = 32;

/// Reads the firewall: nftables first; iptables when `nft` is missing or failed, or when nftables
/// shows no filtering (legacy iptables tables live outside the nftables ruleset).
pub(crate) async fn collect(nft: &[String], iptables_save: &[String], limits: Limits) -> Reading<Firewall> {
    let nft_run = run(nft, &["-j", "list", "ruleset"], limits).await;
    let nft_missing = match &nft_run {
        Err(RunError::NotInstalled(name)) => Some(name.clone()),
        _ => None,
    };
    let from_nft = match nft_run {
        Ok(json) => parse_nft(&json),
        Err(e) => Err(e.to_string()),
    };
    if let Ok(firewall) = &from_nft {
        if firewall.active {
            return Reading::Value(firewall.clone());
        }
    }
    let from_iptables = match run(iptables_save, &[], limits).await {
        Ok(text) => Ok(parse_iptables_save(&text)),
        Err(e) => Err(e),
    };
    match (from_nft, from_iptables) {
        (_, Ok(firewall)) if firewall.active => Reading::Value(firewall),
        (Ok(firewall), _) => Reading::Value(firewall),
        (Err(_), Ok(firewall)) => Reading::Value(firewall),
        (Err(nft), Err(RunError::NotInstalled(iptables))) => match nft_missing {
            Some(nft) => unknown(format!("neither {nft} nor {iptables} is installed")),
            None => unknown(nft),
        },
        (Err(nft), Err(iptables)) => unknown(format!("{nft}; {iptables}")),
    }
}

/// Identifies a chain across tables and families.
type ChainKey = (String, String, String);

/// Reads `nft -j list ruleset` output.
pub(crate) fn parse_nft(json: &str) -> Result<Firewall, String> {
    let root: Value = serde_json::from_str(json).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items =
        root.get("nftables").and_then(Value::as_array).ok_or("nft printed JSON without an \"nftables\" array")?;

    let mut input_chains = HashSet::new();
    let mut default_deny = false;
    // Each chain's rules: whether a rule drops or rejects, and the chains it jumps to.
    let mut chain_rules: HashMap<ChainKey, Vec<RuleSummary>> = HashMap::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            let Some(key) = chain_key(chain, "name") else { continue };
            let family = key.0.as_str();
            let is_input_filter = matches!(family, "ip" | "ip6" | "inet")
                && chain.get("hook").and_then(Value::as_str) == Some("input")
                && chain.get("type").and_then(Value::as_str) == Some("filter");
            if is_input_filter {
                if matches!(chain.get("policy").and_then(Value::as_str), Some("drop" | "reject")) {
                    default_deny = true;
                }
                input_chains.insert(key);
            }
        } else if let Some(rule) = item.get("rule") {
            let Some(key) = chain_key(rule, "chain") else { continue };
            let mut summary = RuleSummary::default();
            if let Some(expr) = rule.get("expr") {
                summarize(expr, 0, &mut summary);
            }
            chain_rules.entry(key).or_default().push(summary);
        }
    }

    let rules = input_chains.iter().map(|key| chain_rules.get(key).map_or(0, Vec::len)).sum::<usize>();
    let filtering = input_chains.iter().any(|start| {
        reaches_deny(start, |key: &ChainKey| {
            let (family, table) = (key.0.clone(), key.1.clone());
            chain_rules
                .get(key)
                .into_iter()
                .flatten()
                .map(move |rule| {
                    let targets = rule
                        .jumps
                        .iter()
                        .map(|target| (family.clone(), table.clone(), target.clone()))
                        .collect::<Vec<_>>();
                    (rule.denies, targets)
                })
                .collect::<Vec<_>>()
                .into_iter()
        })
    });
    Ok(Firewall {
        backend: FirewallBackend::Nftables,
        active: default_deny || filtering,
        rules: u32::try_from(rules).unwrap_or(u32::MAX),
        default_deny,
    })
}

fn chain_key(object: &Value, name_field: &str) -> Option<ChainKey> {
    let field = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
    Some((field("family")?, field("table")?, field(name_field)?))
}

#[derive(Debug, Default)]
struct RuleSummary {
    denies: bool,
    jumps: Vec<String>,
}

/// Finds `drop`/`reject` verdicts and `jump`/`goto` targets anywhere in a rule's expressions
/// (verdict maps included).
fn summarize(value: &Value, depth: usize, summary: &mut RuleSummary) {
    if depth > MAX_EXPR_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                match key.as_str() {
                    "drop" | "reject" => summary.denies = true,
                    "jump" | "goto" => {
                        if let Some(target) = inner.get("target").and_then(Value::as_str) {
                            summary.jumps.push(target.to_string());
                        }
                    }
                    _ => {}
                }
                summarize(inner, depth + 1, summary);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| summarize(item, depth + 1, summary)),
        _ => {}
    }
}

/// Whether a chain reachable from `start` (through jumps) has a denying rule. `rules_of` gives a
/// chain's rules as (denies, jump targets).
fn reaches_deny<K, F, I>(start: &K, rules_of: F) -> bool
where
    K: Clone + Eq + std::hash::Hash,
    F: Fn(&K) -> I,
    I: Iterator<Item = (bool, Vec<K>)>,
{
    let mut seen = HashSet::new();
    let mut pending = vec![start.clone()];
    while let Some(chain) = pending.pop() {
        if !seen.insert(chain.clone()) {
            continue;
        }
        for (denies, targets) in rules_of(&chain) {
            if denies {
                return true;
            }
            pending.extend(targets);
        }
    }
    false
}

/// Reads `iptables-save` output: the `filter` table's `INPUT` chain, its policy, its rules and the
/// user chains it jumps to. No `filter` table (nothing loaded) is no firewall.
pub(crate) fn parse_iptables_save(text: &str) -> Firewall {
    let mut table = "";
    let mut default_deny = false;
    let mut rules_in_input = 0u32;
    let mut chain_rules: HashMap<String, Vec<(bool, Vec<String>)>> = HashMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            table = name;
            continue;
        }
        if table != "filter" {
            continue;
        }
        if let Some(policy) = line.strip_prefix(":INPUT ") {
            default_deny = matches!(policy.split_whitespace().next(), Some("DROP" | "REJECT"));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let mut words = rule.split_whitespace();
            let Some(chain) = words.next() else { continue };
            let mut target = None;
            while let Some(word) = words.next() {
                if word == "-j" || word == "--jump" || word == "-g" || word == "--goto" {
                    target = words.next();
                }
            }
            let denies = matches!(target, Some("DROP" | "REJECT"));
            let jumps = match target {
                Some(t) if !matches!(t, "DROP" | "REJECT" | "ACCEPT" | "RETURN" | "LOG") => {
                    vec![t.to_string()]
                }
                _ => Vec::new(),
            };
            if chain == "INPUT" {
                rules_in_input = rules_in_input.saturating_add(1);
            }
            chain_rules.entry(chain.to_string()).or_default().push((denies, jumps));
        }
    }
    let filtering = reaches_deny(&"INPUT".to_string(), |chain| chain_rules.get(chain).into_iter().flatten().cloned());
    Firewall {
        backend: FirewallBackend::Iptables,
        active: default_deny || filtering,
        rules: rules_in_input,
        default_deny,
    }
}

#[cfg(test)]
#[path = "firewall_test.rs"]
mod tests;
