"""RemoteModel and remote.toml: every bad value is a typed error naming the field (and the file), and no
secret reaches a repr, a message or a status."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve._remote import signature_from_metadata
from inprocserve._remote_model import RemoteModel, read_remote_toml


def test_defaults_and_endpoint() -> None:
    remote = RemoteModel(url="http://127.0.0.1:8000/", model="fraud", version=3)
    assert remote.url == "http://127.0.0.1:8000"
    assert remote.version == "3"
    assert remote.endpoint == "http://127.0.0.1:8000/v2/models/fraud/versions/3"
    assert RemoteModel(url="https://gw.example/kserve", model="a b").path == "/v2/models/a%20b"
    assert pickle.loads(pickle.dumps(remote)) == remote
    assert inprocserve.RemoteModel is RemoteModel


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"url": "ftp://host"}, "url"),
        ({"url": "host:8000"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "http://host:99999"}, "url"),
        ({"url": "http://host/?q=1"}, "url"),
        ({"model": ""}, "model"),
        ({"version": "../3"}, "version"),
        ({"version": True}, "version"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"connect_timeout_s": "1"}, "connect_timeout_s"),
        ({"retries": -1}, "retries"),
        ({"concurrency": 0}, "concurrency"),
        ({"failure_threshold": 1.5}, "failure_threshold"),
        ({"cooloff_s": -1}, "cooloff_s"),
        ({"retry_after_send": 1}, "retry_after_send"),
        ({"binary_tensors": "yes"}, "binary_tensors"),
        ({"protocol": "grpc"}, "protocol"),
        ({"max_row_bytes": 0}, "max_row_bytes"),
        ({"max_row_bytes": 1.5e9}, "max_row_bytes"),
        ({"headers": {"Bad Name": "x"}}, "headers"),
        ({"headers": {"Content-Type": "x"}}, "headers"),
        ({"headers": {"X-Token": 5}}, "headers"),
    ],
)
def test_invalid_values_name_the_field(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=f"^RemoteModel {field}: "):
        RemoteModel(**{"url": "http://127.0.0.1:8000", "model": "m", **arguments})


def test_secrets_stay_out_of_repr_messages_and_status() -> None:
    remote = RemoteModel(url="http://127.0.0.1:8000", model="m", headers={"Authorization": "Bearer s3cret"})
    assert "s3cret" not in repr(remote)
    assert remote.describe()["headers"] == {"Authorization": "***"}
    with pytest.raises(inprocserve.ConfigurationError) as caught:
        RemoteModel(url="http://user:pa55@127.0.0.1:8000", model="m")
    assert "pa55" not in str(caught.value) and "header" in str(caught.value)
    with pytest.raises(inprocserve.ConfigurationError) as caught:
        RemoteModel(url="http://127.0.0.1", model="m", headers={"Authorization": "s3cret\r\nX: y"})
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "value", ["Bearer s3cr\u20acT-t\u00f6ken", "s3cret\u2603", "s3cret\x01", "s3cret\x7f", "s3cret\udc80"]
)
def test_a_header_value_http_cannot_carry_is_refused_without_showing_it(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past Latin-1, the HTTP client's encoder failed every request with a bare UnicodeEncodeError quoting a
    # character of the secret and its position (its .object held the whole secret); control characters
    # reached the server. Refused when configured, naming the header and nothing of its value.
    with pytest.raises(
        inprocserve.ConfigurationError, match=r"^RemoteModel headers: the value of 'Authorization'"
    ) as caught:
        RemoteModel(url="http://127.0.0.1:8000", model="m", headers={"Authorization": value})
    assert "s3c" not in str(caught.value) and "\u20ac" not in str(caught.value)
    assert caught.value.__cause__ is None and "s3c" not in str(caught.value.__context__)  # nothing chained holds it
    monkeypatch.setenv("FRAUD_TOKEN", value.replace("\udc80", "\u2603"))  # the environment holds valid text
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_TOKEN")
    path = tmp_path / "remote.toml"
    path.write_text('url = "http://h"\nmodel = "m"\n[headers_from_env]\nAuthorization = "FRAUD_TOKEN"\n')
    with pytest.raises(inprocserve.ModelLoadError, match=r"remote\.toml: key 'headers' the value of 'Authorization'"):
        read_remote_toml(path)


def test_header_values_of_visible_ascii_tabs_and_latin_1_are_taken() -> None:
    headers = {"Authorization": "Bearer a.b-c_d~e+f/g=", "X-Note": "caf\u00e9\tau lait", "X-Empty": ""}
    assert RemoteModel(url="http://127.0.0.1:8000", model="m", headers=headers).headers == headers


def test_remote_toml_reads_every_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_TOKEN", "Bearer t0ken")
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "OTHER_TOKEN, FRAUD_TOKEN")
    path = tmp_path / "remote.toml"
    path.write_text(
        'url = "http://127.0.0.1:8000"\nmodel = "fraud"\nversion = 3\ntimeout_s = 2\nconnect_timeout_s = 0.5\n'
        "retries = 1\nconcurrency = 2\nfailure_threshold = 3\ncooloff_s = 10\nbinary_tensors = false\n"
        '[headers]\nX-Tenant = "shop"\n[headers_from_env]\nAuthorization = "FRAUD_TOKEN"\n'
    )
    remote = read_remote_toml(path)
    assert remote == RemoteModel(
        url="http://127.0.0.1:8000",
        model="fraud",
        version="3",
        timeout_s=2.0,
        connect_timeout_s=0.5,
        retries=1,
        concurrency=2,
        failure_threshold=3,
        cooloff_s=10.0,
        binary_tensors=False,
        headers={"X-Tenant": "shop", "Authorization": "Bearer t0ken"},
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('model = "m"\n', "url"),
        ('url = "http://h"\n', "model"),
        ('url = "http://h"\nmodel = "m"\ntimeout = 3\n', "timeout"),
        ('url = "http://h"\nmodel = "m"\ntimeout_s = -3\n', "timeout_s"),
        ('url = "gopher://h"\nmodel = "m"\n', "url"),
        ('url = "http://h"\nmodel = "m"\nheaders = 3\n', "headers"),
        (
            'url = "http://h"\nmodel = "m"\n[headers_from_env]\nAuthorization = "NO_SUCH_VARIABLE_SET"\n',
            "headers_from_env",
        ),
    ],
)
def test_bad_remote_toml_names_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "remote.toml"
    path.write_text(text)
    with pytest.raises(inprocserve.ModelLoadError, match=f"remote.toml: .*'{key}") as caught:
        read_remote_toml(path)
    assert str(path) in str(caught.value)


def test_remote_toml_reads_only_the_environment_variables_the_server_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # remote.toml comes from whoever may write the repository, and names the URL its headers go to: reading any
    # variable, a file dropped there (loaded by a hot reload) sent the app's DATABASE_URL to a server of its own.
    monkeypatch.setenv("DATABASE_URL", "postgres://app:db-password@db/prod")
    monkeypatch.setenv("FRAUD_TOKEN", "Bearer t0ken")
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_TOKEN")
    path = tmp_path / "remote.toml"

    def refusal(variable: str) -> str:
        path.write_text(f'url = "http://h"\nmodel = "m"\n[headers_from_env]\nX-Leak = "{variable}"\n')
        with pytest.raises(inprocserve.ModelLoadError) as caught:
            read_remote_toml(path)
        assert "db-password" not in str(caught.value)
        return str(caught.value).replace(variable, "<name>")

    refused = refusal("DATABASE_URL")
    assert refused.endswith(
        "key 'headers_from_env.X-Leak': environment variable '<name>' is not one a remote.toml may read: list it "
        "in INPROCSERVE_REMOTE_ENV in the server's environment (names separated by commas or spaces; one written "
        "NAME@https://host:port is read only by a remote.toml whose url has that origin)"
    )
    assert refusal("NO_SUCH_VARIABLE_SET") == refused  # set or not: the file's author learns nothing of it
    path.write_text('url = "http://h"\nmodel = "m"\n[headers_from_env]\nAuthorization = "FRAUD_TOKEN"\n')
    assert read_remote_toml(path).headers == {"Authorization": "Bearer t0ken"}
    monkeypatch.delenv("INPROCSERVE_REMOTE_ENV")  # no list: no variable is read
    assert refusal("FRAUD_TOKEN") == refused


def test_a_variable_bound_to_an_origin_is_read_only_by_a_remote_toml_naming_that_origin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plain listed name limits which secret a dropped-in remote.toml can send, not where: with the URL its
    # own, the token went to its author's server. Bound (NAME@origin), it reaches only its model server.
    monkeypatch.setenv("FRAUD_TOKEN", "Bearer t0ken")
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_TOKEN@https://models.internal:8443, OTHER")
    path = tmp_path / "remote.toml"

    def headers(url: str) -> dict[str, str]:
        path.write_text(f'url = "{url}"\nmodel = "m"\n[headers_from_env]\nAuthorization = "FRAUD_TOKEN"\n')
        return read_remote_toml(path).headers

    assert headers("https://models.internal:8443") == {"Authorization": "Bearer t0ken"}
    assert headers("HTTPS://Models.Internal:8443/base") == {"Authorization": "Bearer t0ken"}  # (same origin)
    for elsewhere in ("http://attacker.example:8443", "http://models.internal:8443", "https://models.internal"):
        with pytest.raises(inprocserve.ModelLoadError, match=r"is not one a remote\.toml may read") as caught:
            headers(elsewhere)
        assert "t0ken" not in str(caught.value) and "models.internal:8443" not in str(caught.value)
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_TOKEN@https://models.internal")  # default port 443
    assert headers("https://models.internal:443") == {"Authorization": "Bearer t0ken"}
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "FRAUD_TOKEN@models.internal:8443")  # no scheme: never matched
    with pytest.raises(inprocserve.ModelLoadError, match=r"binds 'FRAUD_TOKEN' to what is not an http\(s\) URL"):
        headers("https://models.internal:8443")


def test_remote_toml_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "remote.toml"
    path.write_text("url = \n")
    with pytest.raises(inprocserve.ModelLoadError, match="not valid TOML"):
        read_remote_toml(path)


def test_metadata_becomes_a_signature() -> None:
    signature = signature_from_metadata(
        {
            "name": "m",
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                {"name": "ids", "datatype": "INT64", "shape": [-1]},
                {"name": "text", "datatype": "BYTES", "shape": [-1, 1]},
            ],
            "outputs": [{"name": "y", "datatype": "FP64", "shape": [-1, 2]}],
        },
        where="here",
    )
    assert [(s.name, s.onnx_type, s.dtype, s.shape) for s in signature.inputs] == [
        ("x", "tensor(float)", np.dtype(np.float32), (None, 4)),
        ("ids", "tensor(int64)", np.dtype(np.int64), (None,)),
        ("text", "tensor(string)", np.dtype(object), (None, 1)),
    ]
    assert signature.outputs[0].onnx_type == "tensor(double)"
    assert signature.batchable


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"inputs": [], "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]},
        {"inputs": [{"name": "x", "datatype": "COMPLEX", "shape": [-1]}], "outputs": [{"name": "y"}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}], "outputs": []},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": "-1"}], "outputs": []},
        # only a ZipMap's maps, which the protocol cannot carry: nothing left to answer with
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [{"name": "p", "datatype": "seq(map(int64,tensor(float)))", "shape": []}],
        },
    ],
)
def test_unusable_metadata_is_a_load_error(document: object) -> None:
    with pytest.raises(inprocserve.ModelLoadError, match=r"^here: "):
        signature_from_metadata(document, where="here")
