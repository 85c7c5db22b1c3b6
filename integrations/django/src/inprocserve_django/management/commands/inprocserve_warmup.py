"""``manage.py inprocserve_warmup``: load, warm up and check every model (for deploy pipelines)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inprocserve_django.server import get_server, reset_server


class Command(BaseCommand):
    help = "Load and warm up every model of INPROCSERVE['REPOSITORY']; exit 1 if any model or version fails."

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
            failed.extend(self._failed_versions(name, model))
        reset_server()
        if failed:
            raise CommandError(f"{len(failed)} failed: {', '.join(failed)}")
        self.stdout.write(self.style.SUCCESS(f"{len(status['models'])} model(s) warmed up"))

    def _failed_versions(self, name: str, model: dict[str, Any]) -> list[str]:
        """The model's versions that did not load: another version answering hides them from `ready`, yet
        a deploy that shipped one (a new version cut short) is what the pipeline runs this to catch."""
        failed = []
        for version, info in sorted(model["versions"].items(), key=lambda item: int(item[0])):
            if info.get("state") == "failed":
                failed.append(f"{name} v{version}")
                self.stdout.write(f"FAILED  {name} v{version}: {info.get('error')}")
        return failed
