"""A model's ``config.toml`` as a CI pipeline, a sync or an editor may leave it: every refusal is a
``ConfigurationError`` that names the file and says what to fix, and the other models keep serving."""

from __future__ import annotations

import codecs
import socket
from pathlib import Path

import pytest

from inprocserve import ConfigurationError
from inprocserve._config import load_model_config
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def test_an_integer_of_thousands_of_digits_is_a_configuration_error_naming_the_file(
    repository: Path, make_server: ServerFactory
) -> None:
    """tomllib's int() refuses more than 4300 digits with a ValueError: the model's config_error was Python's
    "Exceeds the limit (4300 digits) for integer string conversion", naming neither the file nor the key."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "other", 1)
    config = repository / "scale" / "config.toml"
    config.write_text("[batching]\nmax_batch_size = 1" + "0" * 5000 + "\n")
    server = make_server(repository)
    error = server.status()["models"]["scale"]["config_error"]
    assert error.startswith(f"{config}: not valid TOML: ")
    assert "integer" in error and "digits" in error
    assert server.models == {"other": [1]}


HUGE = "x" * 500_000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"batching = '{HUGE}'", "[batching] must be a table"),
        (f"[batching]\nmax_batch_size = '{HUGE}'", "batching.max_batch_size must be"),
        ("[batching]\nmax_batch_size = [" + "1, " * 100_000 + "]", "batching.max_batch_size must be"),
        (f"[batching]\nmax_delay_s = '{HUGE}'", "batching.max_delay_s must be"),
        (f"[batching]\nenabled = '{HUGE}'", "batching.enabled must be"),
        (f"[batching]\npadding = '{HUGE}'", "batching.padding must be a table"),
        (f"[batching]\npreferred_batch_sizes = ['{HUGE}']", "batching.preferred_batch_sizes must"),
        (f"[pool]\ngraph_optimization = '{HUGE}'", "pool.graph_optimization must be"),
        (f"[pool]\nproviders = '{HUGE}'", "pool.providers must be"),
        (f"[pool]\ndevice_ids = ['{HUGE}']", "pool.device_ids must be"),
        (f"[pool]\nmemory_pattern = '{HUGE}'", "pool.memory_pattern must be"),
        (f"[warmup]\ninputs_file = [{HUGE[:100_000]!r}]".replace("'", '"'), "warmup.inputs_file must be"),
        (f"[rollout]\ncanary = '{HUGE}'", "rollout.canary must be a table"),
        (f"[rollout]\nstrategy = '{HUGE}'", "rollout.strategy must be"),
        (f"[rollout.shadow]\nversions = [{', '.join(['0'] * 100_000)}]", "rollout.shadow.versions must list"),
        (f"nan_policy = '{HUGE}'", "nan_policy must be"),
        (f"[inputs.x]\nmin = '{HUGE}'", "inputs.x: min must be"),
        (f"[inputs.x]\nmax = {'9' * 4000}", "inputs.x: max must be"),
        (f"version_policy = '{HUGE}'", "version_policy must be"),
    ],
    ids=lambda value: value if len(value) < 40 else "",
)
def test_a_wrong_value_of_half_a_megabyte_is_quoted_short(tmp_path: Path, text: str, key: str) -> None:
    """A value of the wrong type was quoted whole: a 500 kB string (or a list of 100,000 numbers) where a
    count belongs made a 500 kB config_error in every status(), on the status page and in the log."""
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigurationError) as info:
        load_model_config(path, ignored=[])
    message = str(info.value)
    assert message.startswith(f"{path}: ") and key in message
    assert len(message) < 1000, message[:300]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_a_config_toml_saved_as_utf16_with_its_byte_order_mark_is_read(tmp_path: Path, encoding: str) -> None:
    """Windows PowerShell's ``Out-File`` and ``>`` write UTF-16 with a byte-order mark (as the checksum files
    that are read so): the file was refused with "'utf-8' codec can't decode byte 0xff in position 0"."""
    path = tmp_path / "config.toml"
    path.write_bytes(codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE)
    with path.open("ab") as handle:
        handle.write("# café\r\n[batching]\r\nmax_batch_size = 8\r\n".encode(encoding))
    assert load_model_config(path).batching.max_batch_size == 8


def test_a_config_toml_in_another_encoding_is_refused_saying_to_save_it_as_utf8(
    repository: Path, make_server: ServerFactory
) -> None:
    """A Latin-1 comment refused the file with Python's "'utf-8' codec can't decode byte 0xe9 in position 5:
    invalid continuation byte": no line, and no word of what to do."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = repository / "scale" / "config.toml"
    config.write_bytes("[batching]\n# réglé pour la production\nmax_batch_size = 8\n".encode("latin-1"))
    error = make_server(repository).status()["models"]["scale"]["config_error"]
    assert error.startswith(f"{config}: not UTF-8 text (line 2: byte 0xe9)")
    assert "save it as UTF-8" in error


def test_a_socket_where_config_toml_belongs_is_no_regular_file(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A Unix socket (a dev server's, left in the folder) refused its open with "[Errno 6] No such device or
    address", which said nothing of what lay there nor what to do."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "other", 1)
    config = repository / "scale" / "config.toml"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(config))
        server = make_server(repository)
        error = server.status()["models"]["scale"]["config_error"]
    assert error == f"{config}: not a regular file (a folder, a pipe or a device); write the file there"
    assert server.models == {"other": [1]}


@pytest.mark.filterwarnings("ignore:.*max_delay_ms is deprecated:DeprecationWarning")
def test_a_deprecated_max_delay_ms_past_any_float_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    """An integer of 400 digits (TOML's integers have no bound in tomllib) escaped as Python's bare
    "OverflowError: int too large to convert to float", naming neither the file nor the key."""
    path = tmp_path / "config.toml"
    path.write_text("[batching]\nmax_delay_ms = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigurationError, match=r"batching\.max_delay_ms must be a finite number") as info:
        load_model_config(path, ignored=[])
    assert str(info.value).startswith(f"{path}: ")
