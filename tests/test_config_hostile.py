"""A model's ``config.toml`` as a CI pipeline, a sync or an editor may leave it: every refusal is a
``ConfigurationError`` that names the file and says what to fix, and the other models keep serving."""

from __future__ import annotations

from pathlib import Path

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
