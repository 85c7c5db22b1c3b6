"""The admin switch endpoint and the compatibility gate: an incompatible version is a 409 unless forced."""

from __future__ import annotations

from pathlib import Path

from inprocserve_flask import Inprocserve
from test_flask import make_app

import inprocserve
from inprocserve.testing import build_mlp_model, save_model


def test_switch_to_an_incompatible_version_is_a_409_unless_forced(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    save_model(build_mlp_model((4, 8, 2), input_name="x"), folder, "m", 1)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), folder, "m", 2)
    only_first = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.specific(1))
    app = make_app(folder, INPROCSERVE_ADMIN_TOKEN="s3cret", INPROCSERVE_MODEL_CONFIG=only_first)
    client = app.test_client()
    good = {"Authorization": "Bearer s3cret"}
    try:
        refused = client.post("/-/inprocserve/models/m/switch", json={"version": 2}, headers=good)
        assert refused.status_code == 409
        assert refused.json["error"] == "incompatible" and "input 'x' is gone" in refused.json["message"]
        assert refused.json["report"]["incompatibilities"]
        forced = client.post("/-/inprocserve/models/m/switch", json={"version": 2, "force": True}, headers=good)
        assert forced.status_code == 200
        assert {key: forced.json[key] for key in ("model", "stable")} == {"model": "m", "stable": 2}
        assert forced.json["revision"] >= 1  # written to the control file every worker follows
        bad = client.post("/-/inprocserve/models/m/switch", json={"version": 2, "force": "yes"}, headers=good)
        assert bad.status_code == 400
    finally:
        Inprocserve.close(app)
