//! The loader's `std::regex` for tensor-override patterns, reached through the shim,
//! and the shapes that make libstdc++'s backtracking engine hang on tensor names
//! (found by fuzzing): what `ModelParams::validate` refuses before a load.

use std::ffi::{CStr, CString};

use llama_cpp_moe_sys as sys;

/// `std::regex_search(name, pattern)` through the shim: whether the loader would apply
/// an override with `pattern` to the tensor `name`. `None` for an invalid pattern, one
/// whose search could backtrack for minutes (which `ModelParams::validate` refuses too),
/// or a string with a NUL byte.
///
/// ```
/// use llama_cpp_moe::model::regex_search;
/// assert_eq!(regex_search(r"blk\.1\.ffn_up", "blk.1.ffn_up_exps.weight"), Some(true));
/// assert_eq!(regex_search("((", "x"), None);
/// ```
pub fn regex_search(pattern: &str, name: &str) -> Option<bool> {
    if backtracking_hazard(pattern).is_some() {
        return None;
    }
    let pattern = CString::new(pattern).ok()?;
    let name = CString::new(name).ok()?;
    // SAFETY: both strings are NUL-terminated; the shim catches every C++ exception.
    match unsafe { sys::llama_moe_regex_search(pattern.as_ptr(), name.as_ptr()) } {
        1 => Some(true),
        0 => Some(false),
        _ => None,
    }
}

/// Compiles `pattern` with the loader's `std::regex`; `Err(reason)` if it would throw.
pub(crate) fn check_regex(pattern: &CStr) -> Result<(), String> {
    if let Some(hazard) = backtracking_hazard(&pattern.to_string_lossy()) {
        return Err(format!(
            "{hazard}: std::regex accepts it, then backtracks for minutes or forever on \
             tensor names that almost match (the load would hang)"
        ));
    }
    let mut err = [0u8; 256];
    // SAFETY: NUL-terminated pattern; err is writable for err.len() bytes and the shim
    // NUL-terminates what it writes; exceptions never leave the shim.
    let ok = unsafe {
        sys::llama_moe_regex_is_valid(pattern.as_ptr(), err.as_mut_ptr().cast(), err.len())
    };
    if ok == 1 {
        return Ok(());
    }
    // The shim NUL-terminates its message; should it not, the whole buffer is the message.
    let reason = CStr::from_bytes_until_nul(&err).map_or(&err[..], CStr::to_bytes);
    Err(format!(
        "not a valid std::regex ({})",
        String::from_utf8_lossy(reason)
    ))
}

/// The position of a quantifier (`*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}`) applied directly
/// to another quantifier (`a+*`, `x{2}+`, `a*??`), which ECMAScript forbids; one lazy `?`
/// after a quantifier is allowed. Escapes and bracket expressions are skipped. Found by
/// fuzzing: libstdc++'s `std::regex` accepts these and then never finishes a search.
pub(crate) fn nested_quantifier(pattern: &str) -> Option<usize> {
    #[derive(PartialEq)]
    enum After {
        Atom,
        Quantifier,
        LazyQuantifier,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut after = After::Atom;
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => {
                after = After::Atom;
                i += 2;
                continue;
            }
            '[' => {
                after = After::Atom;
                i = class_end(&chars, i);
                continue;
            }
            '*' | '+' => {
                if after != After::Atom {
                    return Some(i);
                }
                after = After::Quantifier;
            }
            '?' => {
                after = match after {
                    After::Atom => After::Quantifier,
                    After::Quantifier => After::LazyQuantifier,
                    After::LazyQuantifier => return Some(i),
                };
            }
            '{' => {
                let close = chars[i..].iter().position(|&c| c == '}').map(|n| i + n);
                let is_bound = close.is_some_and(|end| {
                    let inner: String = chars[i + 1..end].iter().collect();
                    let mut parts = inner.splitn(2, ',');
                    let low = parts.next().unwrap_or("");
                    let high = parts.next().unwrap_or("0");
                    !low.is_empty()
                        && low.chars().all(|c| c.is_ascii_digit())
                        && high.chars().all(|c| c.is_ascii_digit())
                });
                if let (true, Some(end)) = (is_bound, close) {
                    if after != After::Atom {
                        return Some(i);
                    }
                    after = After::Quantifier;
                    i = end + 1;
                    continue;
                }
                after = After::Atom;
            }
            _ => after = After::Atom,
        }
        i += 1;
    }
    None
}

/// Most unbounded repetitions (`*`, `+`, `{n,}`) one pattern may hold: each one more
/// multiplies `std::regex`'s backtracking on a name that almost matches by the name's
/// length. Measured with libstdc++ on a 64-character name: four (`a*a*a*a*b`) take
/// 0.4 s, five (`.*.*.*.*.*x`) 3.6 s per tensor.
const MAX_UNBOUNDED_REPETITIONS: usize = 4;

/// Why searching tensor names with `pattern` could take minutes or never end in
/// libstdc++'s backtracking `std::regex` (which the loader uses on every tensor name),
/// with the character where it starts; `None` for the ordinary patterns. Found by
/// fuzzing: a pattern `std::regex` compiles without complaint can still hang the load.
/// Caught shapes: a quantifier on a quantifier (`a+*`); a group repeated more than once
/// that holds an unbounded repetition (`(a+)+`, `(.*a){5}`); an unbounded repetition
/// of a group with alternatives (`(a|a)*`); more than
/// [`MAX_UNBOUNDED_REPETITIONS`] unbounded repetitions in all.
pub(crate) fn backtracking_hazard(pattern: &str) -> Option<String> {
    /// An open group: where it starts and what it holds so far.
    struct Group {
        start: usize,
        unbounded_inside: bool,
        alternatives: bool,
    }
    if let Some(at) = nested_quantifier(pattern) {
        return Some(format!(
            "a quantifier applied to a quantifier at character {at}"
        ));
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut open = vec![Group {
        start: 0,
        unbounded_inside: false,
        alternatives: false,
    }];
    let mut unbounded = 0;
    let mut i = 0;
    while i < chars.len() {
        let mut closed = None;
        match chars[i] {
            '\\' => i += 2,
            '[' => i = class_end(&chars, i),
            '(' => {
                open.push(Group {
                    start: i,
                    unbounded_inside: false,
                    alternatives: false,
                });
                // `(?:`, `(?=`, `(?!`: the group starts after its marker.
                i += if chars.get(i + 1) == Some(&'?') { 3 } else { 1 };
                continue;
            }
            ')' if open.len() > 1 => {
                closed = open.pop();
                i += 1;
            }
            '|' => {
                open.last_mut()
                    .expect("the whole pattern's frame")
                    .alternatives = true;
                i += 1;
                continue;
            }
            _ => i += 1,
        }
        let repetition = repetition_at(&chars, i);
        if let Some(r) = &repetition {
            i += r.len;
            unbounded += usize::from(r.unbounded);
        }
        let (is_unbounded, repeats) = repetition
            .as_ref()
            .map_or((false, false), |r| (r.unbounded, r.repeats));
        if let Some(group) = &closed {
            if repeats && group.unbounded_inside {
                return Some(format!(
                    "the group at character {} repeats an unbounded repetition",
                    group.start
                ));
            }
            if is_unbounded && group.alternatives {
                return Some(format!(
                    "an unbounded repetition of the alternatives in the group at character {}",
                    group.start
                ));
            }
        }
        if is_unbounded || closed.is_some_and(|g| g.unbounded_inside) {
            open.last_mut()
                .expect("the whole pattern's frame")
                .unbounded_inside = true;
        }
    }
    (unbounded > MAX_UNBOUNDED_REPETITIONS).then(|| {
        format!(
            "{unbounded} unbounded repetitions (`*`, `+`, `{{n,}}`), more than \
             {MAX_UNBOUNDED_REPETITIONS}"
        )
    })
}

/// A quantifier in a pattern: how many characters it takes (a lazy `?` included),
/// whether it has no upper bound, and whether it can repeat its atom more than once.
struct Repetition {
    len: usize,
    unbounded: bool,
    repeats: bool,
}

/// The quantifier starting at `chars[i]`, if one does.
fn repetition_at(chars: &[char], i: usize) -> Option<Repetition> {
    let (len, unbounded, repeats) = match chars.get(i)? {
        '*' | '+' => (1, true, true),
        '?' => (1, false, false),
        '{' => {
            let end = i + chars[i..].iter().position(|&c| c == '}')?;
            let inner: String = chars[i + 1..end].iter().collect();
            let (low, high) = match inner.split_once(',') {
                Some((low, high)) => (low, Some(high)),
                None => (inner.as_str(), None),
            };
            if low.is_empty() || !low.chars().all(|c| c.is_ascii_digit()) {
                return None;
            }
            match high {
                None => (
                    end + 1 - i,
                    false,
                    low.parse::<u64>().map_or(true, |n| n > 1),
                ),
                Some("") => (end + 1 - i, true, true),
                Some(h) if h.chars().all(|c| c.is_ascii_digit()) => {
                    (end + 1 - i, false, h.parse::<u64>().map_or(true, |n| n > 1))
                }
                Some(_) => return None,
            }
        }
        _ => return None,
    };
    let lazy = usize::from(chars.get(i + len) == Some(&'?'));
    Some(Repetition {
        len: len + lazy,
        unbounded,
        repeats,
    })
}

/// The index just past the bracket expression starting at `chars[i]` (`[`); a `]`
/// right after `[` or `[^` is a literal.
fn class_end(chars: &[char], i: usize) -> usize {
    let mut j = i + 1;
    if chars.get(j) == Some(&'^') {
        j += 1;
    }
    if chars.get(j) == Some(&']') {
        j += 1;
    }
    while j < chars.len() && chars[j] != ']' {
        j += if chars[j] == '\\' { 2 } else { 1 };
    }
    j + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::{
        dense_ffn_layer_pattern, expert_layer_pattern, DENSE_FFN_REGEX, EXPERTS_REGEX,
    };
    use crate::model::placement::is_routed_expert;

    #[test]
    fn nested_quantifiers_are_found_and_plain_ones_are_not() {
        for (pattern, at) in [
            ("[a-z]+****", 6),
            ("a**", 2),
            ("a+*", 2),
            ("x{2}+", 4),
            ("x+{2}", 2),
            ("a*??", 3),
            (r"blk\.(0|1)+*", 11),
        ] {
            assert_eq!(nested_quantifier(pattern), Some(at), "{pattern}");
        }
        for pattern in [
            r"blk\.(0|1|2)\.ffn_(up|down|gate|gate_up)_(ch|)exps",
            r"\.ffn_.*_exps",
            "a+?b{1,3}?c*?d??",
            r"[+*?]+",
            r"[]*]+",
            r"\*+",
            r"\++",
            "x{2,}",
            "a{b}*",
        ] {
            assert_eq!(nested_quantifier(pattern), None, "{pattern}");
        }
    }

    /// The shapes that made libstdc++'s `std::regex_search` run for seconds to forever
    /// on a 64-character name (measured, see `MAX_UNBOUNDED_REPETITIONS`; the fuzz
    /// finding was `t***…*9exception`), and the everyday `-ot` patterns that must pass.
    #[test]
    fn backtracking_hazards_are_found_and_everyday_patterns_pass() {
        for (pattern, needle) in [
            ("t****9exception", "quantifier applied to a quantifier"),
            ("(a+)+b", "group at character 0 repeats"),
            ("(.*)*x", "group at character 0 repeats"),
            ("x(.*a){5}x", "group at character 1 repeats"),
            (r"blk\.((\d+)\.)+ffn", "group at character 5 repeats"),
            ("(a|a)*b", "alternatives in the group at character 0"),
            (
                "(?:up|down){2,}",
                "alternatives in the group at character 0",
            ),
            (".*.*.*.*.*x", "5 unbounded repetitions"),
        ] {
            let hazard = backtracking_hazard(pattern).unwrap_or_else(|| panic!("{pattern}"));
            assert!(hazard.contains(needle), "{pattern}: {hazard}");
            assert_eq!(regex_search(pattern, "blk.0.ffn_up_exps.weight"), None);
        }
        for pattern in [
            EXPERTS_REGEX,
            DENSE_FFN_REGEX,
            &expert_layer_pattern(12),
            r"blk\.(0|1|2)\.ffn_(up|down|gate|gate_up)_(ch|)exps",
            r"blk\.([0-9]|1[0-9])\.ffn_.*_exps\.=CPU",
            r"(blk\.\d+\.)?ffn_.*_exps",
            r"blk\.\d+\.ffn_.*_exps.*",
            r"(up|down)\.weight",
            r"a{1,3}(b{2})*c",
            r"[()|*+]+x",
            r"\(a+\)+",
            "a*a*a*a*b",
        ] {
            assert_eq!(backtracking_hazard(pattern), None, "{pattern}");
        }
    }

    #[test]
    fn check_regex_refuses_a_nested_quantifier_before_std_regex_sees_it() {
        let err = check_regex(c"[a-z]+****").unwrap_err();
        assert!(err.contains("quantifier applied to a quantifier"), "{err}");
        assert!(check_regex(c"blk\\.0\\.ffn_up_exps").is_ok());
    }

    /// The Rust classifier against llama.cpp's `std::regex` on every name built from the
    /// pieces that matter (prefixes, FFN parts, expert suffixes, tails), near misses
    /// included.
    #[test]
    fn classifier_agrees_with_std_regex_on_every_combination() {
        let prefixes = ["blk.0", "blk.17", "", "x", "blk.3.ffn_up.ffn", "."];
        let parts = [
            "ffn_up",
            "ffn_down",
            "ffn_gate",
            "ffn_gate_up",
            "ffn_gate_inp",
            "ffn_norm",
            "ffn_up_gate",
            "ffn_",
            "ffn",
            "ffn_upp",
            "fn_up",
            "ffn_UP",
        ];
        let suffixes = [
            "_exps",
            "_chexps",
            "_shexp",
            "_shexps",
            "_exp",
            "_ch_exps",
            "exps",
            "_chexp",
            "_cexps",
            "_hexps",
            "_exps_",
            "_chchexps",
            "",
            "_",
        ];
        let tails = ["", ".weight", ".bias", ".0", "s"];
        let mut checked = 0;
        for p in prefixes {
            for part in parts {
                for suffix in suffixes {
                    for tail in tails {
                        for dot in [".", "_", ""] {
                            let name = format!("{p}{dot}{part}{suffix}{tail}");
                            assert_eq!(
                                is_routed_expert(&name),
                                regex_search(EXPERTS_REGEX, &name) == Some(true),
                                "{name:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 12 * 14 * 5 * 3);
    }

    #[test]
    fn layer_patterns_do_not_match_longer_layer_numbers() {
        let p1 = expert_layer_pattern(1);
        assert_eq!(p1, r"blk\.1\.ffn_(up|down|gate|gate_up)_(ch|)exps");
        assert_eq!(regex_search(&p1, "blk.1.ffn_up_exps.weight"), Some(true));
        assert_eq!(regex_search(&p1, "blk.10.ffn_up_exps.weight"), Some(false));
        let d = dense_ffn_layer_pattern(0);
        assert_eq!(regex_search(&d, "blk.0.ffn_up.weight"), Some(true));
        assert_eq!(regex_search(&d, "blk.0.ffn_up_exps.weight"), Some(false));
        assert_eq!(regex_search(&d, "blk.0.ffn_up_shexp.weight"), Some(false));
    }

    #[test]
    fn invalid_regex_is_reported_not_thrown() {
        let err = check_regex(c"((").unwrap_err();
        assert!(!err.is_empty());
        assert!(check_regex(c"blk\\.0\\.").is_ok());
        assert_eq!(regex_search("((", "x"), None);
    }
}
