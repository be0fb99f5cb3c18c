"""Run stage scripts quickly and still each in a process of its own: a server process imports
the package once, then forks a child per run, which executes the stage script as ``__main__``.

Why: the bad-input cases each run a real stage script that fails before any work, so nearly all
of a plain ``python stages/X.py`` (2.5-4.5 s here) was importing torch, ONNX Runtime and the
package; a forked child starts in milliseconds. The server runs no torch op before forking, so
no thread pool exists yet and forking is safe.

    runner = StageRunner()                     # starts the server (imports once)
    result = runner.run(["stages/distill.py"], cwd=project, env={...})
    result.returncode, result.stdout, result.stderr
    runner.close()
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

# What the stage scripts import; anything else a script needs is imported in its child.
PRELOAD = [
    "torch",
    "numpy",
    "onnxruntime",
    "torch_pruning",
    "dvclive",
    "shrinkflow.core.outputs",
    "shrinkflow.measure.benchmark",
    "shrinkflow.measure.benchmark_worker",
    "shrinkflow.data.prepared",
    "shrinkflow.data.sources",
    "shrinkflow.compress.distill",
    "shrinkflow.compress.teacher_ensemble",
    "shrinkflow.measure.evaluate",
    "shrinkflow.training.live",
    "shrinkflow.params.load",
    "shrinkflow.compress.prune",
    "shrinkflow.compress.prune_budget",
    "shrinkflow.compress.quantize",
    "shrinkflow.model_files.open",
    "shrinkflow.training.loop",
]


class StageRunner:
    """The client: one server per runner, one forked child per ``run``."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str],
            timeout: float = 300) -> subprocess.CompletedProcess:
        """``python *argv`` in ``cwd`` with exactly ``env``; output captured like subprocess."""
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out),
                       "stderr": str(err), "timeout": timeout}
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            reply = self._proc.stdout.readline()
            if not reply:
                raise RuntimeError(f"the stage server exited with {self._proc.wait()}")
            code = json.loads(reply)["returncode"]
            return subprocess.CompletedProcess([sys.executable, *argv], code,
                                               out.read_text(), err.read_text())

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)


def _child(request: dict) -> None:
    """In the forked child: become ``python ARGV`` in ``cwd`` with ``env``, then exit."""
    code = 1
    try:
        signal.alarm(max(1, round(request["timeout"])))  # its default action ends the child
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        script = os.path.abspath(request["argv"][0])
        sys.argv = [script, *request["argv"][1:]]
        sys.path[0] = os.path.dirname(script)  # as `python script.py` sets it
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:  # as the interpreter treats it: None 0, int itself, else 1
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
    except BaseException:  # noqa: BLE001 - what the interpreter would print, then exit 1
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _serve() -> None:
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # a stray print while importing must not corrupt the replies
    for name in PRELOAD:
        __import__(name)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve()
