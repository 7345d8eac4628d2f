"""Start-up figures: `fleet-tui --version` beside `python -c pass`, and the console's first frame in tmux
(`fleet-tui --demo`) beside the same floor.

    python benchmarks/bench_startup.py [--runs 15] [--no-frame]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - start)
    return out


HELLO_TEXTUAL = ("from textual.app import App\nfrom textual.widgets import Static\n"
                 "class Hello(App):\n    def compose(self):\n        yield Static('Proposals')\nHello().run()\n")


def first_frame(env: dict[str, str], cmd: str, marker: str = "Proposals", timeout: float = 20.0) -> float:
    """Seconds from starting `cmd` in a fresh tmux session until `marker` is on screen."""
    session = f"fleet-bench-{os.getpid()}"
    subprocess.run(["tmux", "kill-session", "-t", session], stderr=subprocess.DEVNULL, check=False)
    start = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "36", cmd], check=True, env=env)
    try:
        while time.perf_counter() - start < timeout:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True, check=False).stdout
            if marker in screen:
                return time.perf_counter() - start
            time.sleep(0.005)
        raise RuntimeError(f"no first frame within {timeout}s")
    finally:
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=False)
        time.sleep(0.5)
        subprocess.run(["tmux", "kill-session", "-t", session], stderr=subprocess.DEVNULL, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-frame", action="store_true", help="skip the tmux first-frame measurement")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="fleet-bench-home-")
    env = {**os.environ, "HOME": home, "XDG_STATE_HOME": f"{home}/state", "XDG_CONFIG_HOME": f"{home}/config"}
    # Measure as installed: with bytecode caches (pip writes them for a wheel; a first run writes them for an
    # editable install), not recompiling every module at every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run([sys.executable, "-c", "import fleet_tui.tui.launch, fleet_tui.orchestrator, fleet_tui.demo"],
                   check=True, env=env)
    floor = timed([sys.executable, "-c", "pass"], args.runs, env)
    version = timed([str(BIN / "fleet-tui"), "--version"], args.runs, env)
    helps = timed([str(BIN / "fleet-tui"), "--help"], args.runs, env)
    med = statistics.median
    rows = [("python -c pass", med(floor)), ("fleet-tui --version", med(version)), ("fleet-tui --help", med(helps))]
    if not args.no_frame and shutil.which("tmux"):
        hello = Path(home) / "hello.py"
        hello.write_text(HELLO_TEXTUAL)
        for name, cmd in (("tmux: python print", f"{sys.executable} -c 'print(\"Proposals\")'; sleep 5"),
                          ("tmux: Textual hello world", f"{sys.executable} {hello}"),
                          ("tmux: fleet-tui --demo", f"{BIN / 'fleet-tui'} --demo")):
            rows.append((f"first frame, {name}", med([first_frame(env, cmd) for _ in range(7)])))
    print(f"{'what':<45} {'median s':>9} {'x floor':>8}")
    for name, value in rows:
        print(f"{name:<45} {value:>9.3f} {value / med(floor):>8.2f}")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
