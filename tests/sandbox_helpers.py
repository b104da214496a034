"""Looking for what a sandbox run left behind: only this test process's own runs and processes,
so a test can run beside another training or evaluation on the same machine."""

from __future__ import annotations

import os

from diffrl.rewards.sandbox import CHECKER_UID_OFFSET, UID_BASE, SandboxResult, processes_of_uid


def run_leftovers(result: SandboxResult) -> list[int]:
    """Live processes of one run's two uids (its candidate's and its checker's)."""
    assert result.run_id > 0
    return processes_of_uid(UID_BASE + result.run_id) + processes_of_uid(UID_BASE + CHECKER_UID_OFFSET + result.run_id)


def own_descendants() -> list[int]:
    """Live (not zombie) processes descended from this one: the sandboxes this test started,
    through any reward workers, and whatever they forked."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if not fields.get("State", "").strip().startswith("Z"):
            parents[int(entry.name)] = int(fields["PPid"])
    found, frontier = [], [os.getpid()]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def own_sandboxes() -> list[int]:
    """This process's descendants that are sandboxes (their command line runs sandbox_boot.py)."""
    found = []
    for pid in own_descendants():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"sandbox_boot.py" in f.read():
                    found.append(pid)
        except OSError:
            continue
    return found
