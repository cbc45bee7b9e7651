#!/usr/bin/env python3
"""Groups a `perf script` call-graph dump of chat-gateway into cost categories.

    perf script -i perf.data -F comm,tid,period,ip,sym,dso | python3 perf_categories.py

Prints markdown: for each category its self cost (share of samples whose innermost frame is in
it) and its inclusive cost (share of samples with at least one frame of it on the stack), then
the top functions by self and by inclusive cost, and kernel time by the user-space code that
entered the kernel. Used by benches/load/run.sh when PROFILE is set.
"""

import re
import sys
from collections import Counter

# First match wins. Patterns are matched against the demangled symbol name.
CATEGORIES = [
    ("allocation (malloc/free)", re.compile(
        r"^(__GI___libc_(malloc|free|realloc|calloc)|malloc|free|cfree|realloc|calloc|_int_malloc|_int_free|_int_realloc|"
        r"unlink_chunk|malloc_consolidate|__libc_malloc|__libc_free|__libc_realloc|"
        r"__libc_calloc|tcache_|__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|"
        r"alloc::alloc::|alloc::raw_vec::|<alloc::raw_vec::|alloc::raw_vec::finish_grow)")),
    ("memcpy/memset (libc)", re.compile(r"^__(memcpy|memmove|memset|memcmp|memchr)|^(memcpy|memmove|memset|memcmp|bcmp)")),
    ("TLS (rustls, ring)", re.compile(
        r"rustls::|tokio_rustls::|hyper_rustls::|\bring::|ring_core_|^aes_|^gcm_|"
        r"^GFp|chacha|poly1305|^sha256|^sha512|x25519|^p256|^ecp_nistz|^bn_|^CRYPTO_|^aes_hw|"
        r"^aesni|_aesni|^vpaes")),
    ("HTTP parse/encode (httparse, h1 role, http types)", re.compile(
        r"httparse::|hyper::proto::h1::role|hyper::headers|<hyper::proto::h1::role|"
        r"http::header::|<http::header::|http::uri::|<http::uri::|http::method|<http::method|"
        r"http::status")),
    # chat_gateway::server:: is the accept loop: the root of every caller connection's task,
    # so it counts as connection plumbing, not as the request pipeline.
    ("hyper / hyper-util (connections, dispatch, client pool)", re.compile(
        r"hyper::|hyper_util::|<hyper|h2::|<h2::|http_body|<http_body|want::|try_lock::|"
        r"^chat_gateway::server::")),
    ("metrics (prometheus)", re.compile(r"prometheus::|<prometheus::")),
    ("logging (tracing)", re.compile(r"tracing::|tracing_core::|tracing_subscriber::|<tracing")),
    ("JSON (serde_json, in validate)", re.compile(r"serde_json::|<serde_json::|serde::|<serde::")),
    ("rate limiting (governor)", re.compile(r"governor::|<governor::|dashmap|quanta::")),
    ("our pipeline (chat_gateway, tower)", re.compile(
        r"chat_gateway::|<chat_gateway::|tower::|<tower::|tower_service|rand::|<rand::|rand_core|"
        r"percent_encoding|arc_swap::|<arc_swap")),
    ("string formatting (core::fmt)", re.compile(r"core::fmt::|<core::fmt::|alloc::fmt::|<alloc::string::String as core::fmt::Write>|core::fmt")),
    ("tokio (runtime, io driver, timers)", re.compile(r"tokio::|<tokio::|mio::|<mio::|tokio_util")),
    ("bytes", re.compile(r"bytes::|<bytes::")),
]


def frame_category(sym, dso):
    if "kernel.kallsyms" in dso or dso == "[kernel]":
        return "kernel (syscalls, TCP loopback, scheduler)"
    for name, pat in CATEGORIES:
        if pat.search(sym):
            return name
    if "libc.so" in dso:
        return "libc (syscall wrappers, other)"
    if dso in ("[vdso]",):
        return "vdso (clock_gettime)"
    return "other (core, alloc, std)"


FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$")


def samples(lines):
    stack, period = [], 1
    for line in lines:
        if not line.strip():
            if stack:
                yield period, stack
            stack, period = [], 1
            continue
        if not line[0].isspace():
            parts = line.split()
            try:
                period = int(parts[-1])
            except (ValueError, IndexError):
                period = 1
            continue
        m = FRAME.match(line)
        if m:
            sym = re.sub(r"\+0x[0-9a-f]+$", "", m.group(2))
            if sym == "[unknown]" and m.group(3) == "[unknown]":
                continue
            stack.append((sym, m.group(3)))
    if stack:
        yield period, stack


def main():
    # "Owner": the innermost frame that is not a generic helper (allocation, memcpy, core/alloc/
    # std, bytes, fmt, vdso): who asked for the malloc or the copy.
    generic = ("allocation", "memcpy", "other", "bytes", "string formatting", "vdso")
    owner_cat, owner_pipeline = Counter(), Counter()
    self_cat, incl_cat = Counter(), Counter()
    self_sym, incl_sym = Counter(), Counter()
    kernel_by_user = Counter()
    total = 0
    for period, stack in samples(sys.stdin):
        total += period
        cats = [frame_category(s, d) for s, d in stack]
        self_cat[cats[0]] += period
        oi = next((i for i, c in enumerate(cats) if not c.startswith(generic)), None)
        owner = cats[oi] if oi is not None else cats[0]
        owner_cat[owner] += period
        if oi is not None and owner.startswith("our pipeline"):
            owner_pipeline[stack[oi][0]] += period
        self_sym[stack[0]] += period
        for c in set(cats):
            incl_cat[c] += period
        for s in {s for s, d in stack if "kernel" not in d}:
            incl_sym[s] += period
        if cats[0].startswith("kernel"):
            # The code that asked for the syscall: skip libc wrappers, tokio's io glue and
            # generic std/core frames.
            user = next((c for c in cats if not c.startswith(
                ("kernel", "libc", "tokio", "other", "bytes", "vdso"))), "(tokio only: epoll, park)")
            kernel_by_user[user] += period
    if not total:
        print("no samples")
        return
    pct = lambda v: f"{100.0 * v / total:.1f}"
    print("| category | self % | self + the malloc/memcpy/std helpers it called % | inclusive % |")
    print("| --- | ---: | ---: | ---: |")
    for c, v in sorted(incl_cat.items(), key=lambda kv: -self_cat.get(kv[0], 0)):
        own = "" if c.startswith(generic) else pct(owner_cat.get(c, 0))
        print(f"| {c} | {pct(self_cat.get(c, 0))} | {own} | {pct(v)} |")
    print()
    print("Kernel self time by the user-space code that entered the kernel:")
    print()
    print("| entered from | % of all samples |")
    print("| --- | ---: |")
    for c, v in kernel_by_user.most_common():
        print(f"| {c} | {pct(v)} |")
    print()
    short = lambda s: (s[:140] + "…") if len(s) > 140 else s
    print("Top functions by self cost:")
    print()
    print("| self % | function | category |")
    print("| ---: | --- | --- |")
    for (s, d), v in self_sym.most_common(30):
        print(f"| {pct(v)} | `{short(s)}` | {frame_category(s, d)} |")
    print()
    print("Our pipeline by function (self + the malloc/memcpy/std helpers it called):")
    print()
    print("| % | function |")
    print("| ---: | --- |")
    for sym, v in owner_pipeline.most_common(15):
        print(f"| {pct(v)} | `{short(sym)}` |")
    print()
    print("Top functions by inclusive cost (user space, below the runtime's own frames):")
    print()
    print("| inclusive % | function |")
    print("| ---: | --- |")
    shown = 0
    for s, v in incl_sym.most_common():
        if re.search(r"^(tokio::runtime::|std::|core::ops::function|start_thread|clone3|"
                     r"<std::sys::thread|__GI___|entry_SYSCALL|do_syscall)", s):
            continue
        print(f"| {pct(v)} | `{short(s)}` |")
        shown += 1
        if shown >= 40:
            break
    print()
    print(f"samples: {total} (period-weighted)")


if __name__ == "__main__":
    main()
