"""``path("", include("inprocserve_django.v2_urls"))``: the Open Inference Protocol under ``/v2``
(answered when ``INPROCSERVE["V2_PROTOCOL"]`` is true)."""

from django.urls import re_path

from . import v2_views

urlpatterns = [
    # (?s: "." takes a newline too: without it /v2/models/a%0Ab/infer matched no pattern, and got Django's HTML
    # 404 page, where every other /v2 error is the protocol's JSON {"error": ...}); and "v2" followed at once by a
    # control character (/v2%0A) is the protocol's too, its JSON 404
    re_path(r"^(?P<rest>v2(?:[/\x00-\x1f\x7f](?s:.*))?)$", v2_views.endpoint, name="inprocserve-v2"),
]
