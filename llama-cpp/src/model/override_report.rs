//! What each tensor override did: which tensors it matched, how many bytes they hold and
//! where they went; and the warning for explicit patterns that matched nothing (a typo
//! in `-ot` would otherwise silently leave a GPU's worth of weights where they were).

use std::collections::BTreeMap;

use super::params::{regex_search, OverrideKind, OverrideTarget};
use super::placement::TensorTotals;
use super::{ModelParams, Placement};

/// How many near-miss tensor names a no-match warning suggests.
const SUGGESTIONS: usize = 3;

/// The tensors one override matched. llama.cpp applies the first override whose pattern
/// is found in a tensor's name, so every tensor counts for one override at most.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverrideMatch {
    /// The `std::regex` pattern.
    pub pattern: String,
    /// Which builder added it.
    pub kind: OverrideKind,
    /// The requested target, as written (`CPU`, a buffer-type or device name).
    pub target: String,
    /// Names of the tensors it matched, in model order.
    pub tensors: Vec<String>,
    /// Total bytes of those tensors.
    pub bytes: usize,
    /// Where they went: count and bytes per buffer-type name.
    pub buffer_types: BTreeMap<String, TensorTotals>,
}

impl OverrideMatch {
    /// Whether the override matched no tensor at all.
    pub fn is_unused(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Per-override results of a load, from [`crate::Model::override_report`]; one entry per
/// override, in the order llama.cpp received them (explicit ones first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OverrideReport {
    /// One entry per override.
    pub overrides: Vec<OverrideMatch>,
}

impl OverrideReport {
    /// Matches every override of `params` against the tensors of `placement`, first
    /// match wins, as llama.cpp's loader does.
    pub(crate) fn build(params: &ModelParams, placement: &Placement) -> OverrideReport {
        let mut overrides: Vec<OverrideMatch> = params
            .tensor_overrides()
            .map(|o| OverrideMatch {
                pattern: o.pattern().to_owned(),
                kind: o.kind(),
                target: target_name(o.target()),
                tensors: Vec::new(),
                bytes: 0,
                buffer_types: BTreeMap::new(),
            })
            .collect();
        for t in placement.tensors() {
            let Some(m) = overrides
                .iter_mut()
                .find(|m| override_matches(m.kind, &m.pattern, &t.name))
            else {
                continue;
            };
            m.tensors.push(t.name.clone());
            m.bytes += t.bytes;
            let totals = m.buffer_types.entry(t.buffer_type_name()).or_default();
            totals.count += 1;
            totals.bytes += t.bytes;
        }
        OverrideReport { overrides }
    }

    /// The overrides that matched no tensor.
    pub fn unused(&self) -> impl Iterator<Item = &OverrideMatch> {
        self.overrides.iter().filter(|m| m.is_unused())
    }

    /// Logs one warning (target `llama_cpp_moe`) per explicit pattern that matched no
    /// tensor, naming a few tensors it may have meant. Builder-made MoE/FFN patterns are
    /// left to the MoE warnings (no experts, layers beyond the model).
    pub(crate) fn warn_unused(&self, placement: &Placement) {
        for m in self.unused().filter(|m| m.kind == OverrideKind::Explicit) {
            let near = closest_tensor_names(&m.pattern, placement, SUGGESTIONS);
            let hint = if near.is_empty() {
                String::new()
            } else {
                format!("; closest tensor names: {}", near.join(", "))
            };
            log::warn!(
                target: "llama_cpp_moe",
                "tensor override {:?} (-> {}) matched no tensor and moved nothing{hint}",
                m.pattern,
                m.target
            );
        }
    }
}

fn target_name(target: &OverrideTarget) -> String {
    match target {
        OverrideTarget::Cpu => "CPU".to_owned(),
        OverrideTarget::Device(d) => d.name(),
        OverrideTarget::BufferType(b) => b.name(),
        OverrideTarget::Named(n) => n.clone(),
    }
}

/// Whether the loader would apply an override of `kind` with `pattern` to `name`.
/// Explicit patterns go through `std::regex` (the loader's engine); the patterns the MoE
/// builders generate are fixed, so they are decided in Rust (a model with 94 layers would
/// otherwise compile ~100 regexes per tensor). The unit tests check both agree.
fn override_matches(kind: OverrideKind, pattern: &str, name: &str) -> bool {
    match kind {
        OverrideKind::Experts { layer: None } => super::is_routed_expert(name),
        OverrideKind::Experts { layer: Some(l) } => {
            let prefix = format!("blk.{l}");
            name.match_indices(&prefix)
                .any(|(i, _)| starts_with_routed_expert(&name[i + prefix.len()..]))
        }
        OverrideKind::DenseFfn { layer } => ["up", "down", "gate"]
            .iter()
            .any(|p| name.contains(&format!("blk.{layer}.ffn_{p}."))),
        OverrideKind::Explicit => regex_search(pattern, name).unwrap_or(false),
    }
}

/// Whether `s` starts with `.ffn_(up|down|gate|gate_up)_(ch|)exps`.
fn starts_with_routed_expert(s: &str) -> bool {
    let Some(rest) = s.strip_prefix(".ffn_") else {
        return false;
    };
    ["up", "down", "gate", "gate_up"].iter().any(|p| {
        rest.strip_prefix(p)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|r| r.starts_with("exps") || r.starts_with("chexps"))
    })
}

/// The literal text a user probably meant by a regex: escapes resolved (`\.` -> `.`,
/// `\d` -> `0`), anchors, groups, classes and quantifiers dropped.
fn literal_of(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('d') => out.push('0'),
                Some(e) if e.is_ascii_alphabetic() => {}
                Some(e) => out.push(e),
                None => {}
            },
            '^' | '$' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '*' | '+' | '?' => {}
            c => out.push(c),
        }
    }
    out
}

/// Edit distance from `needle` to the closest substring of `hay` (Sellers' algorithm):
/// how far `hay` is from containing `needle`, which is what a regex search asks.
fn substring_distance(needle: &[u8], hay: &[u8]) -> usize {
    let mut prev: Vec<usize> = vec![0; hay.len() + 1];
    let mut cur = vec![0; hay.len() + 1];
    for (i, &n) in needle.iter().enumerate() {
        cur[0] = i + 1;
        for (j, &h) in hay.iter().enumerate() {
            let substitute = prev[j] + usize::from(n != h);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev.into_iter().min().unwrap_or(0)
}

/// A tensor name with its layer number replaced, so that one suggestion stands for the
/// same tensor in every layer.
fn family(name: &str) -> String {
    let mut out = String::new();
    let mut in_digits = false;
    for c in name.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

/// Up to `n` tensor names closest to what `pattern` spells, one per tensor family, best
/// first (ties in model order).
pub(crate) fn closest_tensor_names(pattern: &str, placement: &Placement, n: usize) -> Vec<String> {
    let literal = literal_of(pattern);
    if literal.is_empty() {
        return Vec::new();
    }
    let mut best: Vec<(usize, String, String)> = Vec::new();
    for t in placement.tensors() {
        let d = substring_distance(literal.as_bytes(), t.name.as_bytes());
        let fam = family(&t.name);
        match best.iter_mut().find(|(_, f, _)| *f == fam) {
            Some(entry) if d < entry.0 => *entry = (d, fam, t.name.clone()),
            Some(_) => {}
            None => best.push((d, fam, t.name.clone())),
        }
    }
    best.sort_by_key(|(d, _, _)| *d);
    best.into_iter().take(n).map(|(_, _, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{dense_ffn_layer_pattern, expert_layer_pattern, EXPERTS_REGEX};

    const NAMES: &[&str] = &[
        "token_embd.weight",
        "blk.1.ffn_up_exps.weight",
        "blk.1.ffn_gate_up_exps.weight",
        "blk.1.ffn_down_chexps.weight",
        "blk.1.ffn_up_shexp.weight",
        "blk.1.ffn_up.weight",
        "blk.1.ffn_gate.weight",
        "blk.11.ffn_up_exps.weight",
        "blk.11.ffn_down.weight",
        "blk.10.ffn_gate_exps.weight",
        "blk.1.attn_q.weight",
    ];

    #[test]
    fn builder_patterns_are_decided_like_std_regex() {
        for layer in [0, 1, 10, 11] {
            for name in NAMES {
                let experts = expert_layer_pattern(layer);
                assert_eq!(
                    override_matches(OverrideKind::Experts { layer: Some(layer) }, &experts, name),
                    regex_search(&experts, name).unwrap(),
                    "{experts} on {name}"
                );
                let dense = dense_ffn_layer_pattern(layer);
                assert_eq!(
                    override_matches(OverrideKind::DenseFfn { layer }, &dense, name),
                    regex_search(&dense, name).unwrap(),
                    "{dense} on {name}"
                );
            }
        }
        for name in NAMES {
            assert_eq!(
                override_matches(OverrideKind::Experts { layer: None }, EXPERTS_REGEX, name),
                regex_search(EXPERTS_REGEX, name).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn near_misses_are_measured_against_substrings() {
        assert_eq!(literal_of(r"blk\.\d+\.ffn_upp_exps"), "blk.0.ffn_upp_exps");
        assert_eq!(literal_of(r"^(blk)\.1\.attn_[qk]$"), "blk.1.attn_qk");
        assert_eq!(substring_distance(b"ffn_up", b"blk.1.ffn_up_exps"), 0);
        assert_eq!(substring_distance(b"ffn_upp", b"blk.1.ffn_up_exps"), 1);
        assert_eq!(
            family("blk.12.ffn_up_exps.weight"),
            "blk.N.ffn_up_exps.weight"
        );
    }
}
