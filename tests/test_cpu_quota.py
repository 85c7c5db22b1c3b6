"""A container's CPU limit caps the thread budget: the cgroup quota is read as the kernel lays it out, and a
real process in a real control group with a quota of one core gets one onnxruntime thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inprocserve._cpu_quota import CpuQuota, cpu_quota, memory_limit


def _proc(tmp_path: Path, *, cgroup: str, mounts: list[str]) -> Path:
    """A ``/proc/self`` folder with the two files the quota is found from."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    lines = [f"{30 + i} 25 0:{40 + i} {mount} rw,relatime" for i, mount in enumerate(mounts)]
    (proc / "mountinfo").write_text("\n".join(["25 1 0:23 / /sys rw,nosuid - sysfs sysfs rw", *lines]) + "\n")
    return proc


def _v2_mount(root: str, mount_point: Path) -> str:
    return f"{root} {mount_point} - cgroup2 cgroup2 rw,nsdelegate"


def _v1_mount(root: str, mount_point: Path, controllers: str = "cpu,cpuacct") -> str:
    return f"{root} {mount_point} - cgroup cgroup rw,{controllers}"


def _group(mount_point: Path, path: str, **files: str) -> None:
    folder = mount_point / path.strip("/") if path.strip("/") else mount_point
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_a_cgroup_v2_quota_is_read_from_the_process_group(tmp_path: Path) -> None:
    mount = tmp_path / "sys-fs-cgroup"
    _group(mount, "/", cpu_max="max 100000")
    _group(mount, "/kubepods/pod1", cpu_max="max 100000")
    _group(mount, "/kubepods/pod1/app", cpu_max="150000 100000")
    proc = _proc(tmp_path, cgroup="0::/kubepods/pod1/app\n", mounts=[_v2_mount("/", mount)])

    quota = cpu_quota(proc)

    assert quota == CpuQuota(150_000, 100_000, str(mount / "kubepods/pod1/app/cpu.max"))
    assert quota.cores == 1.5
    assert quota.whole_cores == 1  # rounded down: two busy threads would spend it before the period ends


def test_a_parent_group_with_a_tighter_quota_binds_its_children(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    _group(mount, "/pod", cpu_max="200000 100000")
    _group(mount, "/pod/app", cpu_max="800000 100000")
    proc = _proc(tmp_path, cgroup="0::/pod/app\n", mounts=[_v2_mount("/", mount)])

    quota = cpu_quota(proc)

    assert quota is not None and quota.cores == 2.0 and quota.source == str(mount / "pod/cpu.max")


def test_inside_a_cgroup_namespace_the_group_is_the_mounted_root(tmp_path: Path) -> None:
    # a container sees its own group as "/" (cgroup namespace), mounted at /sys/fs/cgroup
    mount = tmp_path / "cg"
    _group(mount, "/", cpu_max="50000 100000")
    proc = _proc(tmp_path, cgroup="0::/\n", mounts=[_v2_mount("/", mount)])
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 0.5 and quota.whole_cores == 1

    # without one, /proc names the host's path and the mount shows only the container's part of the tree
    other = tmp_path / "other"
    other.mkdir()
    _group(other / "cg", "/", cpu_max="300000 100000")
    host_path = "/system.slice/docker-abc.scope"
    proc = _proc(other, cgroup=f"0::{host_path}\n", mounts=[_v2_mount(host_path, other / "cg")])
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 3.0


def test_a_cgroup_v1_cfs_quota_is_read_from_the_cpu_hierarchy(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    memory = tmp_path / "memory"
    _group(cpu, "/", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    _group(cpu, "/docker/abc", cpu_cfs_quota_us="250000", cpu_cfs_period_us="100000")
    _group(memory, "/docker/abc", cpu_cfs_quota_us="1", cpu_cfs_period_us="100000")  # not the cpu hierarchy
    proc = _proc(
        tmp_path,
        cgroup="5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        mounts=[_v1_mount("/", memory, "memory"), _v1_mount("/", cpu)],
    )

    quota = cpu_quota(proc)

    assert quota is not None and quota.cores == 2.5 and quota.whole_cores == 2
    assert quota.source == str(cpu / "docker/abc/cpu.cfs_quota_us")


def test_no_quota_gives_none(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    _group(v2, "/app", cpu_max="max 100000")
    v1 = tmp_path / "v1"
    _group(v1, "/app", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    proc = _proc(tmp_path, cgroup="3:cpu:/app\n0::/app\n", mounts=[_v1_mount("/", v1, "cpu"), _v2_mount("/", v2)])
    assert cpu_quota(proc) is None


@pytest.mark.parametrize(
    "files",
    [
        {"cpu_max": "garbage"},
        {"cpu_max": "100000"},
        {"cpu_max": "0 100000"},
        {"cpu_max": "100000 0"},
        {"cpu_max": "1.5 100000"},
        {},  # no cpu.max (the cpu controller is not enabled for the group)
    ],
)
def test_an_unreadable_quota_is_no_quota(tmp_path: Path, files: dict[str, str]) -> None:
    mount = tmp_path / "cg"
    _group(mount, "/app", **files)
    proc = _proc(tmp_path, cgroup="0::/app\n", mounts=[_v2_mount("/", mount)])
    assert cpu_quota(proc) is None


def test_without_proc_or_a_cgroup_mount_there_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "missing") is None
    proc = _proc(tmp_path, cgroup="0::/app\n", mounts=[])
    assert cpu_quota(proc) is None
    (proc / "mountinfo").write_text("not a mountinfo line\n- - -\n")
    assert cpu_quota(proc) is None


def test_a_mount_point_with_an_escaped_space_is_found(tmp_path: Path) -> None:
    mount = tmp_path / "c g"
    _group(mount, "/app", cpu_max="100000 100000")
    escaped = str(mount).replace(" ", "\\040")
    proc = _proc(tmp_path, cgroup="0::/app\n", mounts=[f"/ {escaped} - cgroup2 cgroup2 rw"])
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 1.0


# -- a real control group ---------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import inprocserve
    from inprocserve._ort_rules import usable_cores
    from inprocserve.testing import build_mlp_model, save_model

    repository = Path(sys.argv[1])
    save_model(build_mlp_model((8, 16, 2)), repository, "mlp", 1)
    # spinning sessions always take the whole budget (no timing probe): the thread count shows the budget
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(allow_spinning=True))
    with inprocserve.Server(repository, models={"mlp": config}) as server:
        version = server.status()["models"]["mlp"]["versions"]["1"]
        print(json.dumps({
            "usable_cores": usable_cores(),
            "intra_op_threads": version["intra_op_threads"],
            "cpu_quota_cores": version["backend_status"]["cpu_quota_cores"],
        }))
    """
)


@pytest.fixture
def one_core_group() -> Iterator[Path]:
    """A new control group with a CPU quota of one core; the file a process writes its pid to, to join it.

    Needs root, a writable cgroup ``cpu`` controller (v1, or v2 with ``cpu`` in the root's controllers) and at
    least two cores (for a quota below the cores the process may run on); skips, saying which is missing."""
    if (os.cpu_count() or 1) < 2 or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs at least two cores: a one-core quota must be below the cores the process may run on")
    if os.geteuid() != 0:
        pytest.skip("making a control group needs root")
    name = f"inprocserve-test-{uuid.uuid4().hex[:8]}"
    v1 = Path("/sys/fs/cgroup/cpu")
    v2 = Path("/sys/fs/cgroup")
    enabled_cpu = False  # whether this fixture enabled v2's cpu controller for the root's children (undone)
    if (v1 / "cpu.cfs_quota_us").is_file():
        group = v1 / name
        quota_file, quota, join = "cpu.cfs_quota_us", "100000", "tasks"
    elif "cpu" in _read(v2 / "cgroup.controllers").split():
        group = v2 / name
        quota_file, quota, join = "cpu.max", "100000 100000", "cgroup.procs"
        if "cpu" not in _read(v2 / "cgroup.subtree_control").split():
            try:
                (v2 / "cgroup.subtree_control").write_text("+cpu")
            except OSError as exc:
                pytest.skip(f"cannot enable the cgroup v2 cpu controller for child groups: {exc}")
            enabled_cpu = True
    else:
        pytest.skip("no writable cgroup cpu controller (neither v1's /sys/fs/cgroup/cpu nor v2's with cpu)")
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot make a control group at {group}: {exc}")
    try:
        try:
            if quota_file == "cpu.cfs_quota_us":
                (group / "cpu.cfs_period_us").write_text("100000")
            (group / quota_file).write_text(quota)
        except OSError as exc:  # e.g. a parent group's quota below one core
            pytest.skip(f"cannot set a one-core quota in {group}: {exc}")
        yield group / join
    finally:
        for _ in range(50):  # the child has exited; the kernel may take a moment to let the group go
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        if enabled_cpu:
            try:
                (v2 / "cgroup.subtree_control").write_text("-cpu")
            except OSError:  # another group uses it by now: leave it on
                pass


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _child_facts(tmp_path: Path, join: Path | None) -> dict[str, object]:
    """Build a server in a new Python process (in the group whose pid file is ``join``, if given) and return
    what it says about its cores and threads."""
    folder = tmp_path / ("in-group" if join else "outside")
    repository = folder / "models"
    repository.mkdir(parents=True)
    script = folder / "child.py"
    script.write_text(_CHILD)
    run = f'exec "{sys.executable}" "{script}" "{repository}"'
    # the shell joins the group, then becomes the Python process (the same pid, so still in the group)
    command = f'echo $$ > "{join}" && {run}' if join else run
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    facts: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


def test_a_process_under_a_one_core_quota_runs_one_intra_op_thread(one_core_group: Path, tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    if cpu_quota() is not None:
        pytest.skip(f"this process runs under a CPU quota already ({cpu_quota()}): no unlimited control case")
    assert _child_facts(tmp_path, None) == {"usable_cores": cores, "intra_op_threads": cores, "cpu_quota_cores": None}

    assert _child_facts(tmp_path, one_core_group) == {
        "usable_cores": 1,
        "intra_op_threads": 1,
        "cpu_quota_cores": 1.0,
    }


def test_a_group_outside_the_mounted_part_is_not_given_a_strangers_quota(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    _group(mount, "/", cpu_max="100000 100000")  # the group /docker/ab, mounted here: not the process's
    proc = _proc(tmp_path, cgroup="0::/docker/abc\n", mounts=[_v2_mount("/docker/ab", mount)])
    assert cpu_quota(proc) is None
    (proc / "cgroup").write_text("0::/../docker/ab\n")  # outside this process's cgroup namespace
    assert cpu_quota(proc) is None


def test_the_last_of_two_mounts_at_one_place_is_the_one_read(tmp_path: Path) -> None:
    hidden, visible = tmp_path / "host-view", tmp_path / "own"
    _group(hidden, "/app", cpu_max="max 100000")
    _group(visible, "/app", cpu_max="200000 100000")
    proc = _proc(tmp_path, cgroup="0::/app\n", mounts=[_v2_mount("/", hidden), _v2_mount("/", visible)])
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 2.0


def test_a_mount_path_that_is_not_utf8_is_read_as_bytes(tmp_path: Path) -> None:
    mount = tmp_path / "cg"
    _group(mount, "/app", cpu_max="300000 100000")
    proc = _proc(tmp_path, cgroup="0::/app\n", mounts=[_v2_mount("/", mount)])
    with (proc / "mountinfo").open("ab") as mountinfo:  # another mount, whose path the kernel gives as bytes
        mountinfo.write(b"99 25 0:99 / /media/caf\xe9 rw - ext4 /dev/sdb1 rw\n")
    quota = cpu_quota(proc)
    assert quota is not None and quota.cores == 3.0


def test_the_memory_limit_is_the_tightest_on_the_process_group_and_those_above_it(tmp_path: Path) -> None:
    # A systemd unit's MemoryMax= (or a pod's limit) sits on the process's own group or a parent, not on the
    # hierarchy's root: the root file alone said there was no limit.
    for place in "abc":
        (tmp_path / place).mkdir()
    v2 = tmp_path / "v2"
    _group(v2, "/", memory_max="max")
    _group(v2, "/system.slice", memory_max="max")
    _group(v2, "/system.slice/app.service", memory_max="2147483648")
    _group(v2, "/system.slice/app.service/worker", memory_max="8589934592")
    proc = _proc(tmp_path / "a", cgroup="0::/system.slice/app.service/worker\n", mounts=[_v2_mount("/", v2)])
    assert memory_limit(proc) == 2 * 1024**3

    v1 = tmp_path / "v1"
    _group(v1, "/", memory_limit_in_bytes=str(2**63 - 4096))  # (v1's "no limit")
    _group(v1, "/docker/abc", memory_limit_in_bytes="536870912")
    cpu = tmp_path / "cpu"
    _group(cpu, "/docker/abc", memory_limit_in_bytes="1")  # not the memory hierarchy
    proc = _proc(
        tmp_path / "b",
        cgroup="4:cpu,cpuacct:/docker/abc\n5:memory:/docker/abc\n",
        mounts=[_v1_mount("/", cpu), _v1_mount("/", v1, "memory")],
    )
    assert memory_limit(proc) == 512 * 1024**2

    proc = _proc(tmp_path / "c", cgroup="0::/\n", mounts=[_v2_mount("/", v2)])
    assert memory_limit(proc) is None  # ("max" up to the root)
