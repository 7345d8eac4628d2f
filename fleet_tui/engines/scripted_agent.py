"""A deterministic stand-in for a coding agent, run by the scripted engine: `python3 scripted_agent.py SCRIPT`.

Standalone (standard library only): the engine copies this file into the run's scratch dir so it runs in any
container that has python3 and git. SCRIPT is JSON: {"workdir": ..., "time_scale": 1.0, "steps": [...]}, each
step one of print / sleep / write / append / commit / usage / final / exit. Every output line is one JSON
object: {"type": "log", "text", "stream"}, {"type": "usage", ...cumulative totals}, {"type": "result", ...}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def emit(kind: str, **fields: object) -> None:
    sys.stdout.write(json.dumps({"type": kind, **fields}) + "\n")
    sys.stdout.flush()


def log(text: str, stream: str = "out") -> None:
    emit("log", text=text, stream=stream)


def inside(workdir: Path, relative: str) -> Path:
    target = (workdir / relative).resolve()
    if target != workdir and workdir not in target.parents:
        raise ValueError(f"path {relative!r} leaves the workspace")
    return target


def git(workdir: Path, *args: str) -> int:
    # safe.directory: the workspace may belong to another uid than the agent's (a bind mount).
    proc = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=workdir, capture_output=True, text=True,
                          check=False)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.strip():
            log(line, "out" if proc.returncode == 0 else "err")
    return proc.returncode


def resolve_union(workdir: Path) -> None:
    """Settle every conflicted file by keeping both sides (what a person does with two appended lines)."""
    listed = subprocess.run(["git", "diff", "--name-only", "--diff-filter=U"], cwd=workdir, capture_output=True,
                            text=True, check=False).stdout.split()
    for name in listed:
        path = inside(workdir, name)
        kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if not line.startswith(("<<<<<<< ", "=======", ">>>>>>> ", "||||||| "))]
        path.write_text("".join(kept), encoding="utf-8")
        log(f"resolved {name} keeping both sides")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: scripted_agent.py SCRIPT.json", file=sys.stderr)
        return 2
    script = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    workdir = Path(script.get("workdir") or os.getcwd()).resolve()
    scale = float(script.get("time_scale", 1.0))
    os.environ.setdefault("GIT_AUTHOR_NAME", "fleet scripted agent")
    os.environ.setdefault("GIT_AUTHOR_EMAIL", "scripted-agent@fleet.invalid")
    os.environ.setdefault("GIT_COMMITTER_NAME", os.environ["GIT_AUTHOR_NAME"])
    os.environ.setdefault("GIT_COMMITTER_EMAIL", os.environ["GIT_AUTHOR_EMAIL"])
    totals = {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "cost_usd": 0.0}
    final = ""
    code = 0
    for step in script.get("steps", []):
        if "print" in step:
            lines = step["print"] if isinstance(step["print"], list) else [step["print"]]
            for index, line in enumerate(lines):
                if index and step.get("interval"):
                    time.sleep(float(step["interval"]) * scale)
                log(str(line), str(step.get("stream", "out")))
        elif "sleep" in step:
            time.sleep(float(step["sleep"]) * scale)
        elif "write" in step or "append" in step:
            path = inside(workdir, step.get("write") or step["append"])
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w" if "write" in step else "a", encoding="utf-8") as handle:
                handle.write(str(step.get("content", "")))
            log(f"{'wrote' if 'write' in step else 'appended to'} {path.relative_to(workdir)}")
        elif "commit" in step:
            if git(workdir, "add", "-A") == 0:
                git(workdir, "commit", "-q", "-m", str(step["commit"]))
                git(workdir, "log", "-1", "--format=committed %h %s")
        elif "resolve" in step:
            resolve_union(workdir)
        elif "usage" in step:
            for key in totals:
                totals[key] += step["usage"].get(key, 0)
            emit("usage", **totals)
        elif "final" in step:
            final = str(step["final"])
        elif "exit" in step:
            code = int(step["exit"])
            break
    emit("result", message=final, ok=code == 0, exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
