"""Configuration objects and config.toml parsing."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inprocserve import (
    BanditConfig,
    BatchingConfig,
    CanaryConfig,
    ConfigurationError,
    ConfigurationTypeError,
    InterleavingConfig,
    InvalidInputError,
    ModelConfig,
    PaddingConfig,
    PoolConfig,
    RolloutConfig,
    ShadowConfig,
    VersionPolicy,
    WarmupConfig,
    check_repository,
)
from inprocserve._config import load_model_config
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import ServerFactory


def test_defaults_are_valid_and_frozen() -> None:
    config = ModelConfig()
    assert config.batching.max_batch_size == 64
    assert config.batching.max_delay_s is None
    assert config.batching.max_delay_ms is None
    assert config.pool.size == 1
    assert config.pool.allow_spinning is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batching.max_batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: BatchingConfig(max_batch_size=0), "max_batch_size"),
        (lambda: BatchingConfig(max_delay_ms=-1), "max_delay_ms"),
        (lambda: BatchingConfig(max_delay_ms=float("nan")), "max_delay_ms"),
        (lambda: BatchingConfig(max_delay_s=-0.001), "max_delay_s"),
        (lambda: BatchingConfig(max_delay_s=float("inf")), "max_delay_s"),
        (lambda: BatchingConfig(max_delay_s="2ms"), "max_delay_s"),  # type: ignore[arg-type]
        (lambda: BatchingConfig(preferred_batch_sizes=(4, 128)), "preferred_batch_sizes"),
        (lambda: BatchingConfig(max_queue_rows=0), "max_queue_rows"),
        (lambda: BatchingConfig(max_request_rows=0), "max_request_rows"),
        (lambda: PoolConfig(size=0), "pool.size"),
        (lambda: PoolConfig(intra_op_threads=0), "intra_op_threads"),
        (lambda: PoolConfig(providers=()), "providers"),
        (lambda: PoolConfig(providers="CUDAExecutionProvider"), "providers"),  # type: ignore[arg-type]
        (lambda: PoolConfig(device_ids=(-1,)), "device_ids"),
        (lambda: PoolConfig(graph_optimization="max"), "graph_optimization"),  # type: ignore[arg-type]
        (lambda: WarmupConfig(rows=0), "warmup"),
        (lambda: VersionPolicy.latest(0), "latest"),
        (lambda: VersionPolicy("specific"), "specific"),
        (lambda: ModelConfig(nan_policy="drop"), "nan_policy"),  # type: ignore[arg-type]
        (lambda: PaddingConfig(inputs={}), "padding.inputs"),
        (lambda: PaddingConfig(inputs={"tokens": 0}), "axis"),
        (lambda: PaddingConfig(inputs={"tokens": 1}, value={"mask": 0}), "does not pad"),
        (lambda: PaddingConfig(inputs={"tokens": 1}, value=10**400), "padding.value must be a number"),
        (lambda: PaddingConfig(inputs={"tokens": 1}, value={"tokens": "0"}), r"value\['tokens'\] must be a number"),
    ],
)
def test_bad_values_fail_when_built(build: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        build()  # type: ignore[operator]


def test_preferred_batch_sizes_are_sorted_and_deduplicated() -> None:
    assert BatchingConfig(preferred_batch_sizes=(32, 8, 8)).preferred_batch_sizes == (8, 32)


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        (VersionPolicy.latest(), [1, 3, 2], [3]),
        (VersionPolicy.latest(2), [1, 3, 2], [2, 3]),
        (VersionPolicy.all(), [2, 1], [1, 2]),
        (VersionPolicy.specific(1, 3), [1, 2], [1]),
        (VersionPolicy.latest(), [], []),
    ],
)
def test_version_policy_selects(policy: VersionPolicy, available: list[int], served: list[int]) -> None:
    assert policy.select(available) == served


def test_config_toml_is_laid_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        """
version_policy = { latest = 2 }
nan_policy = "reject"

[batching]
max_batch_size = 32
max_delay_s = 0.0015
preferred_batch_sizes = [8, 16]

[batching.padding]
inputs = { tokens = 1, mask = 1 }
outputs = { logits = 1 }
value = 0

[pool]
size = 2
providers = ["CPUExecutionProvider"]

[warmup]
rows = 4
"""
    )
    base = ModelConfig(pool=PoolConfig(inter_op_threads=2))
    config = load_model_config(path, base)
    assert config.version_policy == VersionPolicy.latest(2)
    assert config.nan_policy == "reject"
    assert config.batching.max_batch_size == 32
    assert config.batching.max_delay_s == 0.0015
    assert config.batching.preferred_batch_sizes == (8, 16)
    assert config.batching.padding == PaddingConfig(inputs={"tokens": 1, "mask": 1}, outputs={"logits": 1})
    assert config.pool.size == 2
    assert config.pool.providers == ("CPUExecutionProvider",)
    assert config.pool.inter_op_threads == 2  # kept from the base
    assert config.warmup.rows == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("batchsize = 3", "unknown key 'batchsize'"),
        ("[batching]\nmax_batch = 3", "unknown key\\(s\\) max_batch in \\[batching\\]"),
        ("[batching]\nmax_batch_size = 0", "max_batch_size must be >= 1"),
        ("batching = 3", "must be a table"),
        ("version_policy = 'newest'", "version_policy must be"),
        ("version_policy = { latest = 'two' }", "version_policy must be"),
        ("[pool]\nsize = 'many'", "pool"),
        ("not toml at all ===", "not valid TOML"),
    ],
)
def test_bad_config_toml_names_the_file_and_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=fragment) as info:
        load_model_config(path)
    assert str(path) in str(info.value)


def test_a_config_toml_under_another_process_s_lease_is_read_once_the_lease_is_given_up(tmp_path: Path) -> None:
    """A file server (Samba's oplocks) may hold a lease: a non-blocking open is refused at once (EWOULDBLOCK)."""
    path = tmp_path / "config.toml"
    path.write_text("[batching]\nmax_batch_size = 8\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", f"""
import fcntl, os, signal, time
F_SETLEASE = 1024
descriptor = os.open({str(path)!r}, os.O_RDONLY)
try:
    fcntl.fcntl(descriptor, F_SETLEASE, fcntl.F_WRLCK)
except OSError as exc:
    print(f"no lease: {{exc}}", flush=True)
    raise SystemExit(0) from None
signal.signal(signal.SIGIO, lambda *_: (time.sleep(0.3), fcntl.fcntl(descriptor, F_SETLEASE, fcntl.F_UNLCK)))
print("leased", flush=True)
time.sleep(60)
"""],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    with holder:
        try:
            assert holder.stdout is not None
            leased = holder.stdout.readline().strip()
            if leased.startswith("no lease"):  # (fs.leases-enable = 0; NFS, 9p and some sandboxes grant none)
                pytest.skip(f"this kernel or file system grants no file lease: {leased}")
            assert leased == "leased"
            assert load_model_config(path).batching.max_batch_size == 8
        finally:
            holder.kill()


def test_a_config_toml_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Some Windows editors start UTF-8 files with one; tomllib said only "Invalid statement (at line 1)"."""
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf[batching]\nmax_batch_size = 8\n")
    assert load_model_config(path).batching.max_batch_size == 8


def make_a_folder(path: Path) -> None:
    path.mkdir()


def make_a_pipe(path: Path) -> None:
    os.mkfifo(path)  # opened for reading, it waits for a writer: Server() blocked for good


def link_to_an_endless_device(path: Path) -> None:
    path.symlink_to("/dev/zero")


def write_a_huge_file(path: Path) -> None:
    path.write_bytes(b"# settings\n" * 200_000)


def nest_too_deeply(path: Path) -> None:
    path.write_text("x = " + "[" * 3000 + "]" * 3000 + "\n")  # (a RecursionError escaped, naming no file)


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (make_a_folder, "not a regular file"),
        (make_a_pipe, "not a regular file"),
        (link_to_an_endless_device, "not a regular file"),
        (write_a_huge_file, "larger than 1048576 bytes"),
        (nest_too_deeply, "not valid TOML: nested too deeply"),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_whatever_lies_where_config_toml_belongs_fails_that_model_alone_and_says_so(
    repository: Path, make_server: ServerFactory, make: Callable[[Path], None], problem: str
) -> None:
    """A folder was left out silently (the model served on defaults); a pipe or a device blocked the start."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "other", 1)
    make(repository / "scale" / "config.toml")
    server = make_server(repository)
    error = server.status()["models"]["scale"]["config_error"]
    assert "config.toml: " in error and problem in error
    assert server.models == {"other": [1]}  # the other models serve


def test_a_config_toml_with_a_syntax_error_keeps_the_model_serving_and_its_repair_is_logged(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The error was logged but its repair was not: the log's last word stayed "not (re)loaded"."""
    caplog.set_level(logging.INFO, logger="inprocserve")
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = repository / "scale" / "config.toml"
    config.write_text("[batching]\nmax_batch_size = 8\n")
    server = make_server(repository)
    config.write_text("[batching]\nmax_batch_size = \n")  # an editor's save cut short
    for _ in range(3):  # the poller reads it again at every poll: logged once
        assert "not valid TOML" in server.refresh()[0]
    assert server.predict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]})["y"].tolist() == [[2.0, 4.0, 6.0, 8.0]]
    config.write_text("[batching]\nmax_batch_size = 16\n")
    assert server.refresh() == [] and server.refresh() == []
    status = server.status()["models"]["scale"]
    assert status["config_error"] is None and status["versions"]["1"]["max_batch_size"] == 16
    logged = [record.getMessage() for record in caplog.records if "'scale'" in record.getMessage()]
    assert len([line for line in logged if "not valid TOML" in line]) == 1, logged
    assert len([line for line in logged if "configuration is valid again" in line]) == 1, logged


def test_a_config_toml_saved_in_place_is_not_applied_while_it_is_empty(
    repository: Path, make_server: ServerFactory
) -> None:
    """Written in place, the file is empty between its truncation and the write: a poll then applied the
    defaults, so version 2 (held back by `stable = 1`) answered requests and version 1 was unloaded."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    config = repository / "scale" / "config.toml"
    config.write_text("[rollout]\nstable = 1\n")
    clock = ManualClock()
    server = make_server(repository, clock=clock)
    x = {"x": [[1.0, 1.0, 1.0, 1.0]]}
    with config.open("r+") as file:  # an editor's save: truncate, then write
        file.truncate(0)
        file.flush()
        assert server._registry.refresh(settle_empty_configs=True) == []  # a poll between the two
        assert server.predict("scale", x).version == 1 and server.models == {"scale": [1, 2]}
        file.write("[rollout]\nstable = 1\n# reviewed\n")
    assert server._registry.refresh(settle_empty_configs=True) == [] and server.predict("scale", x).version == 1
    config.write_text("")  # an empty file meant: the defaults, once it has stayed empty a while
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 1
    clock.advance(2.0)
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 2 and server.models == {"scale": [2]}


def test_a_config_toml_saved_by_a_new_file_is_not_applied_while_it_is_gone(
    repository: Path, make_server: ServerFactory
) -> None:
    """An editor's save that moves the file to its backup and writes a new one (vim's), or rm then cp, leaves
    no config.toml for a moment: a poll then applied the defaults, as for an empty one (v2, held back by
    `stable = 1`, answered, v1 was unloaded)."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    config = repository / "scale" / "config.toml"
    config.write_text("[rollout]\nstable = 1\n")
    clock = ManualClock()
    server = make_server(repository, clock=clock)
    x = {"x": [[1.0, 1.0, 1.0, 1.0]]}
    config.rename(repository.parent / "config.toml~")  # (out of the repository: a scan would list it)
    assert server._registry.refresh(settle_empty_configs=True) == []  # a poll between the two
    assert server.predict("scale", x).version == 1 and server.models == {"scale": [1, 2]}
    config.write_text("[rollout]\nstable = 1\n# reviewed\n")
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 1
    config.unlink()  # removed for good: the defaults, once it has stayed gone a while
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 1
    clock.advance(2.0)
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 2 and server.models == {"scale": [2]}
    save_model(build_scale_model(4.0), repository, "scale", 3)  # a model without a file: nothing to wait for
    server._registry.refresh(settle_empty_configs=True)
    assert server.predict("scale", x).version == 3


@pytest.mark.parametrize("asked", ["refresh", "reload"])
def test_an_empty_config_toml_is_applied_by_a_refresh_asked_for(
    repository: Path, make_server: ServerFactory, asked: str
) -> None:
    """The wait for an empty config.toml to stay so is the poller's: a reload asked for after the file was
    emptied on purpose (back to the defaults) only started it, so no worker applied the file, and without a
    poller none ever did (the reload's revision was done)."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    config = repository / "scale" / "config.toml"
    config.write_text("[rollout]\nstable = 1\n")
    server = make_server(repository, clock=ManualClock())
    x = {"x": [[1.0, 1.0, 1.0, 1.0]]}
    assert server.predict("scale", x).version == 1
    config.write_text("")
    assert getattr(server, asked)() == []
    assert server.predict("scale", x).version == 2 and server.models == {"scale": [2]}


def test_a_model_removed_while_its_config_toml_is_bad_leaves_the_status(
    repository: Path, make_server: ServerFactory
) -> None:
    """Its config_error stayed in status() for good, naming a file that no longer exists."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "retired", 1)
    server = make_server(repository)
    (repository / "retired" / "config.toml").write_text("[batching\n")
    assert "not valid TOML" in server.refresh()[0]
    shutil.rmtree(repository / "retired")
    assert server.refresh() == []
    assert list(server.status()["models"]) == ["scale"]


def test_a_config_toml_broken_again_for_good_after_a_repair_is_logged_again(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Broken, repaired, broken again within the minute: the recurrence was counted, not logged, and the polls
    after it were not even counted, so the log's last word stayed "valid again" while the file stayed broken."""
    from inprocserve._log_limit import LOG_EVERY_S, LogLimit

    caplog.set_level(logging.INFO, logger="inprocserve")
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = repository / "scale" / "config.toml"
    config.write_text("[batching]\nmax_batch_size = 8\n")
    server = make_server(repository)
    clock = ManualClock()
    server._registry._config_log = LogLimit(clock=clock)
    config.write_text("[batching]\nmax_batch_size = \n")
    server.refresh()
    config.write_text("[batching]\nmax_batch_size = 16\n")
    server.refresh()
    config.write_text("[batching]\nmax_batch_size = \n")  # broken again, for good
    for _ in range(10):
        assert "not valid TOML" in server.refresh()[0]
    clock.advance(LOG_EVERY_S)
    for _ in range(10):
        server.refresh()
    errors = [record.getMessage() for record in caplog.records if "not (re)loaded" in record.getMessage()]
    assert len(errors) == 2, errors  # a minute on, still broken: logged again, once
    assert "(10 more since the last such line)" in errors[1]


# -- max_delay_s, and the deprecated max_delay_ms ---------------------------------------------------------


def test_max_delay_ms_still_works_with_a_deprecation_warning_pointing_at_the_caller() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"max_delay_ms=2\.5\) is deprecated; use max_delay_s=0\.0025"
    ) as caught:
        config = BatchingConfig(max_delay_ms=2.5)
    assert caught[0].filename == __file__  # stacklevel: the line that built the config, not the library
    assert (config.max_delay_s, config.max_delay_ms) == (0.0025, None)
    # Derived copies neither warn again nor lose the value.
    assert dataclasses.replace(config, max_batch_size=8).max_delay_s == 0.0025


@pytest.mark.parametrize(("key", "value"), [("max_delay_s", 1e308), ("max_delay_s", 61.0), ("max_delay_ms", 1e12)])
def test_a_wait_for_companions_past_a_minute_is_refused_as_a_unit_mistake(key: str, value: float) -> None:
    """A wait past a lock's limit made the batcher's worker fail in a loop and no request was answered."""
    with pytest.raises(ConfigurationError, match=rf"batching\.{key} must be a finite number >= 0.0 and <="):
        BatchingConfig(**{key: value})


def test_max_delay_ms_and_max_delay_s_must_agree() -> None:
    with pytest.warns(DeprecationWarning):
        assert BatchingConfig(max_delay_ms=2, max_delay_s=0.002).max_delay_s == 0.002
    with pytest.raises(ConfigurationError, match="disagree; set only max_delay_s"):
        BatchingConfig(max_delay_ms=2, max_delay_s=0.5)


def test_max_delay_ms_in_config_toml_still_works_with_a_deprecation_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[batching]\nmax_delay_ms = 1.5\n")
    with pytest.warns(DeprecationWarning, match="max_delay_ms is deprecated; write max_delay_s"):
        config = load_model_config(path)
    assert config.batching.max_delay_s == 0.0015
    assert str(path) in caplog.text  # also logged, where operators look


def test_a_deprecated_key_in_config_toml_is_logged_once_not_at_every_refresh(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text(
        '[batching]\nmax_delay_ms = 2\n[rollout]\nstrategy = "canary"\ncandidate = 1\n'
    )
    with pytest.warns(DeprecationWarning):
        server = make_server(repository)
        for _ in range(5):  # a hot-reload poller reads config.toml again at every poll
            assert server.refresh() == []
    logged = [record.getMessage() for record in caplog.records if "deprecated" in record.getMessage()]
    assert len(logged) == 2, logged  # max_delay_ms, and the flat rollout key: once each


def test_a_deprecated_key_removed_and_brought_back_is_logged_again(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = repository / "scale" / "config.toml"
    config.write_text("[batching]\nmax_delay_ms = 2\n")
    with pytest.warns(DeprecationWarning):
        server = make_server(repository)
        config.write_text("[batching]\nmax_delay_s = 0.002\n")  # fixed
        server.refresh()
        config.write_text("[batching]\nmax_delay_ms = 2\n")  # a rolled-back file brings it back: news again
        server.refresh()
    logged = [record.getMessage() for record in caplog.records if "deprecated" in record.getMessage()]
    assert len(logged) == 2, logged


def test_a_forked_worker_logs_the_deprecations_its_pre_fork_master_found(repository: Path) -> None:
    """A gunicorn master checks the repository before its logging is set up: its "once" must not be the
    workers' too."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_delay_ms = 2\n")
    script = f"""
import logging, os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)
import inprocserve
inprocserve.check_repository({str(repository)!r})  # the master: read once, logged to no handler
pid = os.fork()
if pid == 0:
    logging.basicConfig(stream=sys.stdout, format="worker: %(message)s")
    inprocserve.check_repository({str(repository)!r})
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "worker: " in result.stdout and "max_delay_ms is deprecated" in result.stdout, result.stderr


def test_the_batcher_uses_max_delay_s(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_delay_s = 0.003\n")
    server = make_server(repository)
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert (status["max_delay_s"], status["max_delay_ms"]) == (0.003, 3.0)


# -- precedence: code defaults < config= < config.toml < models= ------------------------------------------


def test_models_in_code_are_laid_over_config_toml_field_by_field(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text(
        'nan_policy = "reject"\n[batching]\nmax_batch_size = 8\nmax_queue_rows = 100\n[warmup]\nrows = 3\n'
    )
    server = make_server(
        repository,
        config=ModelConfig(batching=BatchingConfig(max_request_rows=50), pool=PoolConfig(inter_op_threads=2)),
        models={"scale": ModelConfig(batching=BatchingConfig(max_queue_rows=200), warmup=WarmupConfig(runs=2))},
    )
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert status["max_batch_size"] == 8  # from the file: models= did not set it (was read back as 64)
    effective = server._config_for("scale", _source(repository, "scale"), None)
    assert effective.batching.max_batch_size == 8  # config.toml
    assert effective.batching.max_queue_rows == 200  # models= over config.toml
    assert effective.batching.max_request_rows == 50  # config=, untouched by the file and by models=
    assert effective.pool.inter_op_threads == 2  # config=
    assert effective.nan_policy == "reject"  # config.toml
    assert (effective.warmup.rows, effective.warmup.runs) == (3, 2)  # file and code, same section
    with pytest.raises(InvalidInputError, match="more than the 50 allowed"):  # config= reaches requests
        server.predict("scale", [[0.0] * 4] * 51)


def test_nan_policy_from_the_file_is_enforced_under_a_models_entry(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text('nan_policy = "reject"\n')
    server = make_server(repository, models={"scale": ModelConfig(batching=BatchingConfig(max_batch_size=4))})
    with pytest.raises(InvalidInputError, match="nan_policy"):
        server.predict("scale", [[float("nan"), 0, 0, 0]])


def test_an_invalid_combination_of_file_and_code_is_a_configuration_error(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    server = make_server(
        repository, models={"scale": ModelConfig(batching=BatchingConfig(preferred_batch_sizes=(16,)))}
    )
    status = server.status()["models"]["scale"]
    assert "models['scale']" in status["config_error"] and "preferred_batch_sizes" in status["config_error"]


def test_overlaid_keeps_everything_for_a_default_model_config() -> None:
    base = ModelConfig(nan_policy="reject", batching=BatchingConfig(max_batch_size=8))
    assert base.overlaid(ModelConfig()) is base


def _source(repository: Path, name: str) -> Any:
    from inprocserve._repository import scan_repository

    return scan_repository(repository).models[name]


# -- rollout settings grouped by strategy, and the deprecated flat fields -----------------------------------


def test_rollout_settings_are_grouped_by_strategy() -> None:
    rollout = RolloutConfig(
        strategy="canary",
        stable=1,
        canary=CanaryConfig(version=2, percent=5),
        shadow=ShadowConfig(versions=[3], percent=50),  # type: ignore[arg-type]
        interleaving=InterleavingConfig(rankers=(1, 2)),
        bandit=BanditConfig(policy="epsilon_greedy", epsilon=0.2),
    )
    assert rollout.shadow.versions == (3,) and rollout.referenced_versions == {1, 2, 3}
    with pytest.raises(ConfigurationError, match=r"rollout\.canary\.percent must lie in 0\.\.100"):
        CanaryConfig(percent=101)
    with pytest.raises(ConfigurationError, match=r"rollout\.interleaving\.rankers must name two versions"):
        InterleavingConfig(rankers=(1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"rollout\.bandit\.epsilon"):
        BanditConfig(epsilon=2.0)


def test_flat_rollout_fields_still_work_with_a_deprecation_warning_pointing_at_the_caller() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"RolloutConfig\(candidate=2, canary_percent=5, rankers=\(1, 2\)\) is deprecated"
    ) as caught:
        rollout = RolloutConfig(strategy="canary", candidate=2, canary_percent=5, rankers=(1, 2))  # type: ignore[arg-type]
    assert caught[0].filename == __file__
    assert rollout.canary == CanaryConfig(version=2, percent=5)
    assert rollout.interleaving.rankers == (1, 2)
    assert (rollout.candidate, rollout.canary_percent, rollout.rankers) == (None, None, None)
    with pytest.warns(
        DeprecationWarning,
        match=r"shadow_percent=20, shadow=\(3,\)\) is deprecated; set the grouped fields instead: shadow.percent",
    ):
        shadowed = RolloutConfig(shadow=(3,), shadow_percent=20)  # type: ignore[arg-type]
    assert shadowed.shadow == ShadowConfig(versions=(3,), percent=20)
    with pytest.warns(DeprecationWarning), pytest.raises(ConfigurationError, match="disagree"):
        RolloutConfig(canary=CanaryConfig(version=3), candidate=2)
    assert dataclasses.replace(rollout, salt="x").canary == rollout.canary  # replace() does not warn again


def test_flat_rollout_keys_in_config_toml_still_work_with_a_deprecation_warning(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[rollout]\nstrategy = "canary"\ncandidate = 2\ncanary_percent = 10\nshadow = [3]\n')
    with pytest.warns(DeprecationWarning, match=r"canary_percent, candidate, shadow are deprecated; write percent"):
        config = load_model_config(path)
    assert config.rollout.canary == CanaryConfig(version=2, percent=10)
    assert config.rollout.shadow.versions == (3,)


def test_rollout_groups_follow_the_one_precedence(repository: Path, make_server: ServerFactory) -> None:
    """code defaults < config= < config.toml < models=, key by key inside each rollout group too."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text(
        '[rollout]\nstrategy = "canary"\n[rollout.canary]\npercent = 10\n[rollout.shadow]\npercent = 40\n'
    )
    server = make_server(
        repository,
        config=ModelConfig(
            rollout=RolloutConfig(canary=CanaryConfig(version=1, percent=1), seed=5, bandit=BanditConfig(epsilon=0.3))
        ),
        models={"scale": ModelConfig(rollout=RolloutConfig(shadow=ShadowConfig(versions=(1,))))},
    )
    rollout = server._config_for("scale", _source(repository, "scale"), None).rollout
    assert rollout.canary == CanaryConfig(version=1, percent=10)  # version from config=, percent from the file
    assert rollout.shadow == ShadowConfig(versions=(1,), percent=40)  # versions from models=, percent the file's
    assert (rollout.strategy, rollout.seed, rollout.bandit.epsilon) == ("canary", 5, 0.3)


def test_a_shadows_max_abs_diff_is_read_from_the_models_file(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[rollout.shadow]\nversions = [1]\nmax_abs_diff = 0.01\n")
    server = make_server(repository)
    assert server._config_for("scale", _source(repository, "scale"), None).rollout.shadow.max_abs_diff == 0.01


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), "0.01", True])
def test_a_shadows_max_abs_diff_must_be_a_finite_number_at_least_zero(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"rollout\.shadow\.max_abs_diff must be a finite number >= 0"):
        ShadowConfig(max_abs_diff=value)  # type: ignore[arg-type]


def test_a_shadow_list_of_more_than_64_versions_is_refused_as_the_flag_of_it_is() -> None:
    # each listed version is checked for every request; the flag of it is unusable past 64 (docs/rollouts.md)
    assert len(ShadowConfig(versions=tuple(range(1, 65))).versions) == 64
    with pytest.raises(ConfigurationError, match=r"rollout\.shadow\.versions lists 65 versions; list at most 64"):
        ShadowConfig(versions=tuple(range(1, 66)))


# -- config= and models= of the wrong type ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"config": {"batching": {"max_batch_size": 8}}}, r"config must be an inprocserve\.ModelConfig"),
        ({"models": {"scale": {"batching": {"max_batch_size": 8}}}}, r"models\['scale'\] must be an inprocserve"),
        ({"models": [("scale", ModelConfig())]}, "models must be a dict of model name"),
        ({"models": {1: ModelConfig()}}, r"keyed by model name \(a string\), got the key 1"),
    ],
)
def test_a_config_toml_shaped_dict_in_code_is_refused_when_the_server_is_built(
    repository: Path, make_server: ServerFactory, arguments: dict[str, Any], message: str
) -> None:
    # A dict was accepted, and then every model failed its load with an AttributeError: the server started
    # and served nothing (ModelNotFoundError on every request; a 404 from the plug-ins).
    save_model(build_scale_model(2.0), repository, "scale", 1)
    # (a ConfigurationError, as the other settings the server refuses, and still a TypeError)
    with pytest.raises(ConfigurationTypeError, match=message):
        make_server(repository, **arguments)
    with pytest.raises(ConfigurationTypeError, match=message):
        check_repository(repository, **arguments)
    server = make_server(repository, config=ModelConfig().merged({"batching": {"max_batch_size": 8}}))
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 8  # what the hint says works
    with pytest.raises(ConfigurationTypeError, match=r"config must be an inprocserve\.ModelConfig"):
        server.load("scale", version=1, config={"batching": {}})  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["follow_symlinks", "strict"])
def test_an_on_off_argument_given_as_a_string_is_refused(
    repository: Path, make_server: ServerFactory, argument: str
) -> None:
    # Server("models/", follow_symlinks=os.environ.get("FOLLOW", "false")): "false" is true to Python, and a
    # linked model folder, refused by default, was served.
    save_model(build_scale_model(2.0), repository.parent / "elsewhere", "scale", 1)
    (repository / "scale").symlink_to(repository.parent / "elsewhere" / "scale", target_is_directory=True)
    with pytest.raises(ConfigurationError, match=f"{argument} must be true or false .*, got 'false'"):
        make_server(repository, **{argument: "false"})


def test_a_repository_that_is_not_a_folder_is_refused_when_the_server_is_built(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # A typo in the path ("modles/"): the server started, logged one error and served nothing; every request
    # got "unknown model 'scale' (servable models: none)" and /ready a 503 naming no cause.
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    with pytest.raises(ConfigurationError, match=r"the model repository '.*modles' is not a folder"):
        make_server(tmp_path / "modles")
    with pytest.raises(ConfigurationError, match="is not a folder"):
        make_server(tmp_path / "models" / "scale" / "1" / "model.onnx")


def _rows_against_a_table(*, table_first: bool) -> Any:
    """``scores[batch, k] = x[batch, 4] @ table[k, 4]^T``: the rows are x's (the output's axis 0 is named as
    x's), the table's axis 0 is its entries; the inputs declared in either order."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    table = helper.make_tensor_value_info("table", TensorProto.FLOAT, ["k", 4])
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "table_t"], ["scores"]),
        ],
        "rows-against-a-table",
        [table, x] if table_first else [x, table],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("table_first", [False, True])
def test_max_request_rows_bounds_the_same_rows_whatever_the_order_of_the_inputs(
    repository: Path, make_server: ServerFactory, *, table_first: bool
) -> None:
    # A model scoring rows against a table of entries: batching.max_request_rows = 2 bounded the table's
    # entries, not the rows, when the table was declared first (and the rows when it was declared second)
    import numpy as np

    save_model(_rows_against_a_table(table_first=table_first), repository, "match", 1)
    config = ModelConfig(batching=BatchingConfig(max_request_rows=2))
    server = make_server(repository, models={"match": config})
    table = np.ones((5, 4), np.float32)
    answer = server.predict("match", {"x": np.ones((1, 4), np.float32), "table": table})
    assert answer["scores"].shape == (1, 5)
    with pytest.raises(InvalidInputError, match=r"3 rows, more than the 2 allowed"):
        server.predict("match", {"x": np.ones((3, 4), np.float32), "table": table[:1]})
