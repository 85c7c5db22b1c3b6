"""``manage.py inprocserve_status``: load the models and print their status as JSON."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inprocserve_django.server import get_server


class Command(BaseCommand):
    help = "Load every configured model and print the server status as JSON (exit 1 if any is not ready)."

    def handle(self, *args: Any, **options: Any) -> None:
        status = get_server().status()
        self.stdout.write(json.dumps(status, indent=2, default=str))
        broken = sorted(name for name, model in status["models"].items() if not model["ready"])
        if broken:
            raise CommandError(f"not ready: {', '.join(broken)}")
