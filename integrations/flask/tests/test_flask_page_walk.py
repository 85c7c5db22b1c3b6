"""What docs/flask.md promises of settings that init_app refuses, checked through real Flask request cycles."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve

import inprocserve
from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    return folder


@pytest.mark.parametrize(
    ("prefix", "fixed", "says"),
    [
        ("ops/-/inprocserve", "/ops/-/inprocserve", r"must start with '/', such as '/ops/-/inprocserve'"),
        (5, "/ops", r"must be a URL path such as '/-/inprocserve', got 5"),
        # (url_for gave /ops/x/health, a 308 away, while the admin routes, which merge no slashes, kept /ops//x)
        ("/ops//x", "/ops/x", r"must not hold an empty segment \('//'\), got '/ops//x': write '/ops/x'"),
        ("//ops/x//", "/ops/x", r"must not hold an empty segment \('//'\), got '//ops/x//': write '/ops/x'"),
    ],
)
def test_an_init_app_refusing_the_url_prefix_registers_nothing(
    repository: Path, prefix: object, fixed: str, says: str
) -> None:
    # docs/flask.md: "an init_app that refuses a setting registers nothing, so it can be called again on the same
    # app once the setting is fixed". werkzeug refused a prefix without its leading slash (a number: an
    # AttributeError) while the blueprint was registered, after the extension was: the second init_app raised
    # "already registered on this app".
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_URL_PREFIX=prefix)
    extension = Inprocserve()
    with pytest.raises(inprocserve.ConfigurationError, match=f"INPROCSERVE_URL_PREFIX {says}"):
        extension.init_app(app)
    assert "inprocserve" not in app.extensions
    app.config["INPROCSERVE_URL_PREFIX"] = fixed
    extension.init_app(app)
    try:
        assert app.test_client().get(f"{fixed}/health").json == {"status": "ok"}
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize("protocol", ["on", "off"])
def test_v2_limits_of_the_wrong_kind_fail_init_app_naming_the_setting(repository: Path, protocol: str) -> None:
    # docs/flask.md: a setting of the wrong kind raises ConfigurationTypeError in init_app, "naming the key". A
    # dict for INPROCSERVE_V2_LIMITS raised a bare TypeError ("limits must be ..."), naming no setting, and with
    # the protocol off it was taken without a word (the caps meant for it were never applied once it was on).
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=str(repository),
        INPROCSERVE_V2_PROTOCOL=protocol == "on",
        INPROCSERVE_V2_LIMITS={"rows": 4},
    )
    with pytest.raises(inprocserve.ConfigurationTypeError, match=r"INPROCSERVE_V2_LIMITS must be an inprocserve\.v2"):
        Inprocserve(app)
    assert "inprocserve" not in app.extensions


def test_the_admin_version_bound_is_the_one_docs_state(repository: Path) -> None:
    # docs/flask.md said switch takes a version "from 1 to 2**31-1": 2147483648 was no 400 but a 404 (a version with
    # no folder), and the bound the code holds to is the digits a version folder may have.
    from inprocserve._repository import MAX_VERSION_DIGITS

    page = (Path(__file__).parents[3] / "docs" / "flask.md").read_text()
    assert "2³¹" not in page
    assert f'positive integer `"version"` of at most {MAX_VERSION_DIGITS} digits' in page
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_ADMIN_TOKEN="a-long-admin-token")
    Inprocserve(app)
    try:
        client = app.test_client()

        def switch(version: int) -> tuple[int, str]:
            answer = client.post(
                "/-/inprocserve/models/scale/switch",
                json={"version": version},
                headers={"Authorization": "Bearer a-long-admin-token"},
            )
            return answer.status_code, answer.json["error"]

        assert switch(2**31) == (404, "model_not_found")
        assert switch(10**MAX_VERSION_DIGITS - 1) == (404, "model_not_found")
        assert switch(10**MAX_VERSION_DIGITS) == (400, "invalid_input")
    finally:
        Inprocserve.close(app)
