"""What a run's sandbox does at its end, for tests that play the agent by committing in a workspace by hand:
the real result step of the commit wrapper leaves the branch as a bundle in the scratch dir."""

from __future__ import annotations

import os
import subprocess
from typing import Any

from fleet_tui.workspace import RESULT_SCRIPT, SAFE_DIRECTORY_ENV


def end_run(ws: Any) -> None:
    """Leave `ws`'s branch in its scratch dir as the sandbox would (`result.bundle`, `result.head`)."""
    env = {**os.environ, **SAFE_DIRECTORY_ENV, "FLEET_BRANCH": ws.branch, "FLEET_RESULT_DIR": str(ws.scratch)}
    subprocess.run(["sh", "-c", RESULT_SCRIPT], cwd=ws.repo, env=env, check=True)


async def collect(manager: Any, ws: Any, **kwargs: Any) -> Any:
    """End the run in its sandbox, then collect it as the supervisor does."""
    end_run(ws)
    return await manager.collect(ws, **kwargs)
