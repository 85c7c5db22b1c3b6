"""Review of one day's performance work on the hot paths: behaviour that must not have changed."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import numpy as np

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig
from inprocserve.testing import build_scale_model, save_model

NO_WAIT = ModelConfig(batching=BatchingConfig(max_delay_s=0.0))


def _closed_server_collected_after(repository: Path, *, refused: bool) -> bool:
    """Whether a server, closed and dropped inside a running event loop, is collected while that loop runs on
    (a web server's loop outlives the servers its app builds and closes)."""

    async def main() -> bool:
        server = inprocserve.Server(repository, config=NO_WAIT)
        try:
            good = np.ones((1, 4), np.float32)
            await server.apredict("scale", good)  # (adopts the runners)
            await asyncio.gather(*(server.apredict("scale", good) for _ in range(3)))
            if refused:  # a burst whose every request is refused (wrong width): none is merged
                bad = np.ones((1, 5), np.float32)
                answers = await asyncio.gather(
                    *(server.apredict("scale", bad) for _ in range(3)), return_exceptions=True
                )
                refusals = [type(answer) for answer in answers]
                del answers  # (their tracebacks hold the server)
                assert refusals == [InvalidInputError] * 3
        finally:
            server.close(timeout_s=10)
        dropped = weakref.ref(server)
        del server
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        return dropped() is None

    return asyncio.run(main())


def test_a_closed_server_is_collected_after_a_burst_of_refused_apredicts(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    assert _closed_server_collected_after(repository, refused=False)
    # The loop's per-iteration route memo was set before the inputs were checked, and only a flush (which a
    # refused burst never schedules) cleared it: the loop held the closed server, its versions and sessions.
    assert _closed_server_collected_after(repository, refused=True)
