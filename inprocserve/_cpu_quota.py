"""The CPU quota a Linux control group puts on this process: how many cores' worth of time it may use.

A container's CPU limit (Kubernetes ``resources.limits.cpu``, ``docker run --cpus``) is a quota of CPU time
per period, not a set of cores: the process still sees every core of the host (``os.sched_getaffinity``),
and onnxruntime, asked for that many threads, runs them all. They spend the quota in a fraction of each
period, and the kernel then stops the whole container until the next one starts (100 ms by default): a
request caught there waits for it. Measured on the project's 2-core machine (docs/operations.md, "Cores"),
with a quota of one core, a two-thread session's p99 was about 50 ms against 6-8 ms with one thread.

So the thread budget counts the quota as cores (:attr:`CpuQuota.whole_cores`): cgroup v2's ``cpu.max`` or cgroup
v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, of the process's group and every group above it up to the
root of the hierarchy that the process can see (a parent's limit binds its children too), the tightest one.
Reads a few small files; no process is started, nothing is written.

The memory limit on the same groups (:func:`memory_limit`: cgroup v2's ``memory.max``, v1's
``memory.limit_in_bytes``) is read the same way, for telling a request larger than the process could ever
hold from the host's memory pressure (``_ort_rules.host_memory``).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuQuota", "cpu_quota", "current_cpu_quota", "memory_limit"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CpuQuota:
    """A CPU quota: ``quota_us`` of CPU time per ``period_us``, set in the group at ``source`` (a file)."""

    quota_us: int
    period_us: int
    source: str

    @property
    def cores(self) -> float:
        """The quota in cores: 150000 µs per 100000 µs is 1.5 cores."""
        return self.quota_us / self.period_us

    @property
    def whole_cores(self) -> int:
        """Cores that threads may keep busy at once without spending the quota before the period ends: the
        quota rounded down, at least 1. With 1.5 cores' quota, two threads busy at once would spend it in
        two thirds of each period and then wait out the rest; one thread never waits."""
        return max(1, math.floor(self.cores))


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    """A mounted cgroup hierarchy: ``version`` 1 (the one with the ``cpu`` controller) or 2."""

    version: int
    mount_point: Path
    root: str  # the group mounted there (a container sees its own group as "/", or as a path of the host's)


def cpu_quota(proc: Path = Path("/proc/self")) -> CpuQuota | None:
    """The tightest CPU quota on this process's control groups, or ``None`` when there is none (or it cannot
    be read: not Linux, no cgroup mounted, a file in an unknown format). ``proc``: the process's
    ``/proc/<pid>`` folder, whose ``cgroup`` and ``mountinfo`` say where its groups are."""
    try:
        memberships = _read(proc / "cgroup")
        mounts = _read(proc / "mountinfo")
        tightest: CpuQuota | None = None
        for hierarchy in _hierarchies(mounts, "cpu"):
            group = _group_of(memberships, hierarchy.version, "cpu")
            if group is None:
                continue
            for folder in _folders_up(hierarchy, group):
                quota = _read_v2(folder) if hierarchy.version == 2 else _read_v1(folder)
                if quota is not None and (tightest is None or quota.cores < tightest.cores):
                    tightest = quota
    except (OSError, ValueError) as exc:  # not Linux, /proc not mounted, a folder we may not read: no quota
        logger.debug("no CPU quota read from %s: %s", proc, exc)
        return None
    return tightest


def memory_limit(proc: Path = Path("/proc/self")) -> int | None:
    """The tightest memory limit on this process's control groups, in bytes, or ``None`` when there is none
    (or it cannot be read), as :func:`cpu_quota` finds the groups: a container's, a systemd unit's
    ``MemoryMax=``, and any group above them."""
    try:
        memberships = _read(proc / "cgroup")
        mounts = _read(proc / "mountinfo")
        limits: list[int] = []
        for hierarchy in _hierarchies(mounts, "memory"):
            group = _group_of(memberships, hierarchy.version, "memory")
            if group is None:
                continue
            name = "memory.max" if hierarchy.version == 2 else "memory.limit_in_bytes"
            for folder in _folders_up(hierarchy, group):
                try:
                    text = (folder / name).read_text().strip()
                except OSError:
                    continue
                if text.isdigit() and 0 < int(text) < 2**62:  # ("max", or v1's huge number for no limit)
                    limits.append(int(text))
    except (OSError, ValueError) as exc:
        logger.debug("no memory limit read from %s: %s", proc, exc)
        return None
    return min(limits, default=None)


def current_cpu_quota() -> CpuQuota | None:
    """This process's CPU quota (:func:`cpu_quota`), read again at most every ``QUOTA_READ_EVERY_S`` (a
    read costs a few hundred microseconds: ``predict_many`` asks on every call). Thread-safe."""
    global _last_read
    now = time.monotonic()
    last = _last_read
    if last is not None and now - last[0] < QUOTA_READ_EVERY_S:
        return last[1]
    quota = cpu_quota()
    _last_read = (now, quota)
    return quota


QUOTA_READ_EVERY_S = 10.0
_last_read: tuple[float, CpuQuota | None] | None = None  # (when, what): replaced whole, read without a lock


def _read(path: Path) -> str:
    """A text file of the kernel's: its paths are bytes, which need not be UTF-8 (kept as they are)."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def _hierarchies(mountinfo: str, controller: str) -> list[_Hierarchy]:
    """The cgroup v1 hierarchy holding ``controller`` (``cpu``, ``memory``) and the cgroup v2 hierarchy, as
    mounted.

    A ``mountinfo`` line: ``id parent major:minor root mount_point options [optional...] - fstype source
    super_options``; a v1 hierarchy names its controllers in the super options (``rw,cpu,cpuacct``)."""
    found: dict[int, _Hierarchy] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            separator = fields.index("-")
            root, mount_point = fields[3], fields[4]
            fstype, super_options = fields[separator + 1], fields[separator + 3]
        except (ValueError, IndexError):
            continue
        if fstype == "cgroup2":
            version = 2
        elif fstype == "cgroup" and controller in super_options.split(","):
            version = 1
        else:
            continue
        # the last mount of a hierarchy: one mounted over another at the same place hides it
        found[version] = _Hierarchy(version, Path(_unescape(mount_point)), _unescape(root))
    return list(found.values())


def _group_of(memberships: str, version: int, controller: str) -> str | None:
    """The process's group in the v1 hierarchy of ``controller`` or in the v2 one, from ``/proc/<pid>/cgroup``
    (lines ``id:controllers:path``; v2's is ``0::path``)."""
    for line in memberships.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _id, controllers, path = parts
        if version == 2 and _id == "0" and controllers == "":
            return path
        if version == 1 and controller in controllers.split(","):
            return path
    return None


def _folders_up(hierarchy: _Hierarchy, group: str) -> list[Path]:
    """The folders of ``group`` and of each group above it, up to the mount point, deepest first.

    ``group`` is a path from the hierarchy's root; the mount shows the part below ``hierarchy.root``. None for
    a group outside the mounted part, or a path that climbs (``..``: a group outside this process's cgroup
    namespace): no folder there is known to be the process's, and a stranger's quota must not be applied."""
    root = hierarchy.root.rstrip("/")
    if root:
        if group != root and not group.startswith(root + "/"):
            return []
        group = group[len(root) :]
    parts = [part for part in group.split("/") if part and part != "."]
    if ".." in parts or ".." in root.split("/"):
        return []
    folders = [hierarchy.mount_point.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]
    return [folder for folder in folders if os.path.isdir(folder)]  # (never raises: unreadable is absent)


def _read_v2(folder: Path) -> CpuQuota | None:
    """``cpu.max``: ``"max 100000"`` (no quota) or ``"150000 100000"`` (quota and period, µs)."""
    path = folder / "cpu.max"
    try:
        text = path.read_text().split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    return _quota(text[0], text[1], path)


def _read_v1(folder: Path) -> CpuQuota | None:
    """``cpu.cfs_quota_us`` (-1: no quota) and ``cpu.cfs_period_us``."""
    quota_path = folder / "cpu.cfs_quota_us"
    try:
        quota = quota_path.read_text().strip()
        period = (folder / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return None
    return _quota(quota, period, quota_path)


def _quota(quota: str, period: str, path: Path) -> CpuQuota | None:
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:
        logger.debug("cannot read the CPU quota in %s: %r %r", path, quota, period)
        return None
    if quota_us <= 0 or period_us <= 0:  # -1: no quota
        return None
    return CpuQuota(quota_us, period_us, str(path))


def _unescape(field: str) -> str:
    r"""A ``mountinfo`` path with its octal escapes (``\040`` for a space) decoded."""
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        code = field[index + 1 : index + 4]
        if field[index] == "\\" and len(code) == 3 and all(digit in "01234567" for digit in code):
            out.append(chr(int(code, 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)
