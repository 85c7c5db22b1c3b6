"""``manage.py inprocserve_warmup``: load, warm up and check every model (for deploy pipelines)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inprocserve_django.server import get_server, reset_server


class Command(BaseCommand):
    help = "Load and warm up every model of INPROCSERVE['REPOSITORY']; exit 1 if any fails."

    def handle(self, *args: Any, **options: Any) -> None:
        server = get_server()
        status = server.status()
        failed = []
        for name, model in sorted(status["models"].items()):
            if model["ready"]:
                versions = [v for v, info in model["versions"].items() if info.get("serving")]
                self.stdout.write(f"ready   {name} (versions {', '.join(versions)})")
            else:
                failed.append(name)
                self.stdout.write(f"FAILED  {name}")
        reset_server()
        if failed:
            raise CommandError(f"{len(failed)} model(s) failed: {', '.join(failed)}")
        self.stdout.write(self.style.SUCCESS(f"{len(status['models'])} model(s) warmed up"))
