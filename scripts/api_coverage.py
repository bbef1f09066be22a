#!/usr/bin/env python3
"""The llama.h coverage of the safe crate: every non-deprecated LLAMA_API function of the
pinned include/llama.h, with the safe item that calls it (scanned in llama-cpp/src and the
shim) or the reason it is not wrapped (scripts/api-coverage-reasons.txt).

Usage: api_coverage.py LLAMA_H REPO [--llama-cpp-2 DIR] [--check] [--out FILE]

With --llama-cpp-2 (the source of the llama-cpp-2 crate), a column says which functions
that crate calls, and the summary which of those the safe crate does not.
"""
import os
import re
import sys


def llama_api_functions(header):
    text = open(header, encoding="utf-8").read()
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    functions = []
    for m in re.finditer(r"\bLLAMA_API\b", text):
        # The declaration runs to the next ';' (function declarations only).
        end = text.find(";", m.end())
        decl = text[m.end():end]
        start_context = text[max(0, m.start() - 40):m.start()]
        deprecated = "DEPRECATED(" in start_context.split("\n")[-1] or decl.lstrip().startswith("DEPRECATED(")
        name = re.search(r"\b(llama_\w+)\s*\(", decl)
        if not name:
            continue
        functions.append((name.group(1), deprecated))
    seen, out = set(), []
    for name, dep in functions:
        if name not in seen:
            seen.add(name)
            out.append((name, dep))
    return out


def rust_callers(repo):
    """name -> list of 'path: Type::fn' items that call sys::name."""
    callers = {}
    src = os.path.join(repo, "llama-cpp", "src")
    for root, _, files in os.walk(src):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, repo)
            lines = open(path, encoding="utf-8").read().split("\n")
            impl, func = None, None
            for n, line in enumerate(lines):
                # A `#[cfg(test)] mod` (the unit tests, at the end of a file) calls
                # nothing on behalf of the safe API.
                if line.strip() == "#[cfg(test)]" and n + 1 < len(lines) and re.match(r"\s*mod\s", lines[n + 1]):
                    break
                im = re.match(r"\s*impl\b(?:<[^>]*>)?\s+(?:[\w:<>', ]+\s+for\s+)?([A-Za-z_]\w*)", line)
                if im:
                    impl = im.group(1)
                fm = re.match(r"\s*(?:pub(?:\([^)]*\))?\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)", line)
                if fm:
                    func = fm.group(1)
                if line.startswith("}"):
                    impl = None
                for call in re.findall(r"\bsys::(llama_\w+)\b", line):
                    item = f"{impl}::{func}" if impl and func else (func or "(module)")
                    callers.setdefault(call, [])
                    entry = f"`{item}` ({rel})"
                    if entry not in callers[call]:
                        callers[call].append(entry)
    return callers


def shim_calls(repo):
    """name -> shim functions (llama_moe_*) that call it."""
    calls = {}
    path = os.path.join(repo, "llama-cpp-sys", "shim", "llama_moe_shim.cpp")
    text = open(path, encoding="utf-8").read()
    for m in re.finditer(r"\n[^\n]*\b(llama_moe_\w+)\s*\([^)]*\)\s*(?:noexcept\s*)?\{", text):
        body_start = m.end()
        depth, i = 1, body_start
        while depth and i < len(text):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        for call in set(re.findall(r"\b(llama_(?!moe_)\w+)\s*\(", text[body_start:i])):
            calls.setdefault(call, set()).add(m.group(1))
    return calls


def reasons(path):
    out = {}
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, why = line.partition(":")
        if not sep or not why.strip():
            sys.exit(f"{path}:{n}: expected `function: reason`")
        out[name.strip()] = why.strip()
    return out


def main():
    args = sys.argv[1:]
    check = "--check" in args
    out_file = None
    if "--out" in args:
        out_file = args[args.index("--out") + 1]
    lc2 = None
    if "--llama-cpp-2" in args:
        lc2 = args[args.index("--llama-cpp-2") + 1]
    header, repo = [a for a in args if not a.startswith("--") and a not in (out_file, lc2)][:2]
    functions = llama_api_functions(header)
    callers = rust_callers(repo)
    shim = shim_calls(repo)
    # A shim function counts through the Rust items that call it.
    for name, wrappers in shim.items():
        for w in sorted(wrappers):
            for item in callers.get(w, []):
                callers.setdefault(name, [])
                entry = f"{item} via `{w}`"
                if entry not in callers[name]:
                    callers[name].append(entry)
    why = reasons(os.path.join(repo, "scripts", "api-coverage-reasons.txt"))
    theirs = set()
    if lc2:
        names = {n for n, _ in functions}
        for root, _, files in os.walk(os.path.join(lc2, "src")):
            for f in files:
                if f.endswith(".rs"):
                    text = open(os.path.join(root, f), encoding="utf-8").read()
                    theirs |= set(re.findall(r"\b(llama_\w+)\b", text)) & names
    live = [n for n, dep in functions if not dep]
    deprecated = [n for n, dep in functions if dep]
    rows, missing, pending, stale = [], [], [], []
    wrapped = 0
    for name in live:
        if name in callers:
            wrapped += 1
            rows.append((name, "wrapped", "; ".join(callers[name].copy())))
            if name in why:
                stale.append(name)
        elif name in why:
            kind = "pending" if why[name].startswith("pending") else "not wrapped"
            if kind == "pending":
                pending.append(name)
            rows.append((name, kind, why[name]))
        else:
            missing.append(name)
            rows.append((name, "MISSING", "neither a safe caller nor a reason"))
    unknown = sorted(set(why) - set(live))
    pct = 100.0 * wrapped / len(live)
    lines = [
        "# llama.h coverage of the safe crate",
        "",
        "Generated by `scripts/api-coverage.sh` from the pinned `include/llama.h` (do not edit:",
        "`.ci/run` regenerates it and fails when it differs or when a function has neither a",
        "safe caller nor a reason in `scripts/api-coverage-reasons.txt`).",
        "",
        f"- non-deprecated `LLAMA_API` functions: {len(live)} (deprecated, not counted: {len(deprecated)})",
        f"- called by the safe crate (directly or through the shim): **{wrapped} ({pct:.1f} %)**",
        f"- deliberately not wrapped: {len(live) - wrapped - len(pending) - len(missing)}",
        f"- pending (to be wrapped): {len(pending)}",
    ]
    their_live = [n for n in live if n in theirs]
    they_not_us = [n for n in their_live if n not in callers]
    if lc2:
        version = os.path.basename(os.path.normpath(lc2)).replace("llama-cpp-2-", "")
        lines.append(f"- called by llama-cpp-2 {version}: {len(their_live)}; of those, not called here: "
                     + (", ".join(f"`{n}`" for n in they_not_us) if they_not_us else "none"))
    undecided_theirs = [n for n in they_not_us if n in pending]
    met = pct >= 95.0 and not undecided_theirs
    lines.append(f"- issue 19's target (at least 95 % called, and every function llama-cpp-2 calls "
                 f"called or decided): {'met' if met else 'not met yet'}")
    lines += [
        "",
        "| function | llama-cpp-2 | status | safe item / reason |",
        "|---|---|---|---|",
    ]
    for name, kind, what in rows:
        lines.append(f"| `{name}` | {'yes' if name in theirs else ''} | {kind} | {what} |")
    text = "\n".join(lines) + "\n"
    if out_file:
        open(out_file, "w", encoding="utf-8").write(text)
    else:
        sys.stdout.write(text)
    sys.stderr.write(f"api coverage: {wrapped}/{len(live)} wrapped ({pct:.1f} %), "
                     f"{len(pending)} pending, {len(missing)} missing\n")
    bad = False
    if missing:
        sys.stderr.write("no safe caller and no reason: " + ", ".join(missing) + "\n")
        bad = True
    if unknown:
        sys.stderr.write("reasons for functions llama.h does not declare (or deprecates): " + ", ".join(unknown) + "\n")
        bad = True
    if stale:
        sys.stderr.write("wrapped, but still listed with a reason: " + ", ".join(stale) + "\n")
        bad = True
    if check and bad:
        sys.exit(1)


main()
