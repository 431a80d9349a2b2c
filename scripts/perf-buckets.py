#!/usr/bin/env python3
"""Buckets the samples of `perf script` output (perf record -g) by where their stack
is: a context switch (leaf in finish_task_switch), a wait in io_uring_enter or the
scheduler, an eventfd doorbell, the TCP send path, other io_uring work, other kernel
leaves, and user space. Prints each bucket's samples and share (docs/BENCHMARKS.md,
"Where a `--cores 2` heartbeat's extra CPU goes").

Usage: perf script -i perf.data | scripts/perf-buckets.py
"""
import collections
import sys


def bucket(stack):
    s = " ".join(stack)
    leaf = stack[0]
    if "finish_task_switch" in leaf:
        return "switch"
    if "io_cqring_wait" in s or "schedule" in s:
        return "k:wait/schedule"
    if "eventfd" in s:
        return "k:eventfd"
    if "io_send" in s or "tcp_sendmsg" in s:
        return "k:send"
    if "io_recv" in s or "tcp_recvmsg" in s:
        return "k:recv"
    if "io_uring_enter" in s:
        return "k:uring other"
    if "kallsyms" in leaf:
        return "k:other"
    return "user"


counts = collections.Counter()
stack = []
for line in list(sys.stdin) + [""]:
    line = line.rstrip()
    if not line:
        if stack:
            counts[bucket(stack)] += 1
        stack = []
    elif line[0] in " \t":
        parts = line.split(None, 1)
        if len(parts) > 1:
            stack.append(parts[1])
total = sum(counts.values()) or 1
for k, v in counts.most_common():
    print(f"{k:18} {v:6} {100 * v / total:5.1f}%")
print("total", sum(counts.values()))
