"""``path("", include("inprocserve_django.v2_urls"))``: the Open Inference Protocol under ``/v2``
(answered when ``INPROCSERVE["V2_PROTOCOL"]`` is true)."""

from django.urls import re_path

from . import v2_views

urlpatterns = [
    re_path(r"^(?P<rest>v2(?:/.*)?)$", v2_views.endpoint, name="inprocserve-v2"),
]
