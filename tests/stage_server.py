"""Start the stage processes of the suite's `dvc` runs from a process that has already imported
torch: a `python` on PATH (``shim_dir``) hands ``python stages/X.py`` to a server, which forks a
child that runs the script in the caller's cwd, environment and stdin/stdout/stderr.

Why: each stage process spent 2-4 s importing torch, ONNX Runtime, torch-pruning and DVCLive
before its first line of work, and the suite starts about 300 of them through DVC. A fork starts
in milliseconds. The server imports those libraries and the package's modules that do not
import ONNX Runtime (``_preload_package``: the package the stages would import, the one
installed in the virtual environment), and runs no torch op, so no thread pool exists when it
forks. The libraries read OMP_NUM_THREADS when they load, so the server starts with the
suite's environment (``pipeline_repo.env``).

The child names itself after the script (``/proc/PID/comm``, what `ps` shows) since its command
line stays the server's. Anything else called ``python`` (``python -m ...``, no script, or no
server) becomes the real interpreter through ``exec``, so a command behaves as without the server.

multiprocessing's helpers (``python -c "from multiprocessing.forkserver import main; ..."``) are
forked too: a stage child starts them with the shim (``multiprocessing.spawn.set_executable``),
and the client passes on the descriptors the helper is handed by number (its listener and
pipes), which the child gets under the same numbers. The benchmark stage's forkserver imports
torch, ONNX Runtime and torchvision before it forks a worker per model: about 4 s of CPU in each
of the suite's benchmark runs as a fresh interpreter. Measured (one run each): the tiny 9-model
benchmark, forkserver and workers 9.8 -> 3.8 CPU-s; in the whole suite, 70 -> 15 CPU-s. One
difference from a fresh interpreter: glibc reads ``GLIBC_TUNABLES`` when a program starts, so
the benchmark workers' malloc settings (``measure.benchmark.MALLOC_TUNABLES``) do not apply to
them here; they steady the timings of real models, and no test asserts a timing or a memory
figure of a stage run.

    server = StageServer(env)         # starts it; env: the one the stages run with
    os.environ.update(server.variables())  # pipeline_repo.env() then puts the shim on PATH
    ...
    server.close()
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What the stage scripts import before their first line of work (measured with -X importtime).
# Not onnxruntime: its import starts a thread, which a fork would not copy (and it takes 20 ms).
# torchmetrics.detection: COCO mAP, 1.5 s in each detection stage that measures mAP.
# pandas and matplotlib.figure: report's charts and tables, 0.7 s of each report run.
PRELOAD = ["torch", "torchvision", "numpy", "onnx", "torch_pruning", "dvclive", "yaml",
           "PIL.Image", "torchmetrics.detection", "pandas", "matplotlib.figure"]

# What no module the server imports may bring in (``_preload_package``): ONNX Runtime starts a
# thread when imported, which a fork does not copy.
UNFORKABLE = {"onnxruntime"}

# How long a stage waits for a server still importing (PRELOAD: 5-8 s on a busy machine) before
# it runs on the real interpreter. Running at once cost the session's first `dvc repro`, which
# every end-to-end test waits for, the imports of its first two stages (about 5 s each).
STARTUP_WAIT_S = 60

# The `python -c` commands the server runs: multiprocessing's forkserver and resource tracker.
MULTIPROCESSING_HELPER = "from multiprocessing."
MAX_FDS = 16  # 0, 1, 2 and a helper's listener and pipes

SHIM = """#!/usr/bin/env bash
exec {python} -S {client} "$@"
"""


class StageServer:
    """One server process and its folder: the socket and ``bin/python``, the shim. The folder is
    a short one under /tmp, since a socket's path may not exceed 107 bytes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.folder = folder = Path(tempfile.mkdtemp(prefix="shrinkflow-stages-"))
        self.socket_path = folder / "stage.sock"
        self.shim_dir = folder / "bin"
        self.shim_dir.mkdir(exist_ok=True)
        shim = self.shim_dir / "python"
        shim.write_text(SHIM.format(python=sys.executable, client=__file__))
        shim.chmod(0o755)
        self._proc = subprocess.Popen([sys.executable, __file__, "serve", str(self.socket_path),
                                       str(shim)],
                                      env=env, stdin=subprocess.DEVNULL)

    def variables(self) -> dict[str, str]:
        """What the suite's environment needs: the shim's folder (``pipeline_repo.env`` puts it
        first on PATH) and the server's address and pid (the shim's client reads them)."""
        return {"SHRINKFLOW_TEST_SHIM_DIR": str(self.shim_dir),
                "SHRINKFLOW_TEST_STAGE_SERVER": str(self.socket_path),
                "SHRINKFLOW_TEST_STAGE_SERVER_PID": str(self._proc.pid)}

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


# --- the wire: a 4-byte length, then JSON; the request carries the caller's three fds ---

def _send(sock: socket.socket, message: dict, fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    packet = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [packet], fds)
    else:
        sock.sendall(packet)


def _receive_request(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """The one request and the fds that came with its first bytes."""
    chunk, fds, _, _ = socket.recv_fds(sock, 1 << 16, MAX_FDS)
    while chunk and (len(chunk) < 4 or len(chunk) < 4 + struct.unpack("!I", chunk[:4])[0]):
        more = sock.recv(1 << 16)
        if not more:
            return None, fds
        chunk += more
    if len(chunk) < 4:
        return None, fds
    return json.loads(chunk[4:4 + struct.unpack("!I", chunk[:4])[0]]), fds


def _read_reply(stream) -> dict | None:
    head = stream.read(4)
    if len(head) < 4:
        return None
    return json.loads(stream.read(struct.unpack("!I", head)[0]))


# --- the client: what the shim runs, as `python ARGS` ---

def _forked(args: list[str]) -> tuple[list[str], bool] | None:
    """What the server runs, as ``(argv, unbuffered)``: a script, ``python [-u] script.py ...``
    (``-u``: as torchrun starts its workers), or one of multiprocessing's helpers, ``python
    [flags] -c "from multiprocessing..." ...``, which it starts with the interpreter's own flags
    (``-B``...), the flags a fork keeps. None: the real interpreter runs it."""
    flags, rest = [], args
    while rest and re.fullmatch(r"-[A-Za-z]+", rest[0]) and rest[0] not in ("-c", "-m"):
        step = 2 if rest[0] in ("-X", "-W") else 1
        flags, rest = flags + rest[:step], rest[step:]
    if rest and rest[0].endswith(".py") and os.path.isfile(rest[0]) and set(flags) <= {"-u"}:
        return rest, "-u" in flags
    if len(rest) > 1 and rest[0] == "-c" and rest[1].startswith(MULTIPROCESSING_HELPER):
        return rest, False
    return None


def _open_fds() -> list[int]:
    """The descriptors this process was started with: 0, 1, 2 and any a helper was passed."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))  # the listing's own descriptor is closed by now
        except OSError:
            continue
        fds.append(int(name))
    return sorted(fds)


def _client() -> None:
    args = sys.argv[1:]
    real = sys.executable  # the shim starts this client with the real interpreter
    address = os.environ.get("SHRINKFLOW_TEST_STAGE_SERVER")
    forked = _forked(args) if address else None
    if forked:
        argv, unbuffered = forked
        fds = _open_fds() if argv[0] == "-c" else [0, 1, 2]
        sock = _connect(address)
        if sock is not None:
            _send(sock, {"argv": argv, "unbuffered": unbuffered, "cwd": os.getcwd(),
                         "env": dict(os.environ), "fds": fds}, fds)
            replies = sock.makefile("rb")
            started = _read_reply(replies)
            if started is not None:
                child = started["pid"]
                for sig in (signal.SIGINT, signal.SIGTERM):  # a cancelled run ends the script
                    signal.signal(sig, lambda number, _frame: os.kill(child, number))
                finished = _read_reply(replies)
                sys.exit(finished["returncode"] if finished else 1)
            sys.exit(1)
    os.execv(real, [real, *args])


def _connect(address: str) -> socket.socket | None:
    """A connection to the server; while it is still starting (alive, no address yet), wait for
    it, up to ``STARTUP_WAIT_S``. None: no server to ask."""
    server_pid = int(os.environ.get("SHRINKFLOW_TEST_STAGE_SERVER_PID", "0"))
    deadline = time.monotonic() + STARTUP_WAIT_S
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except OSError:
            sock.close()
        if not server_pid or time.monotonic() > deadline or not alive(server_pid):
            return None
        time.sleep(0.05)


def server_python() -> str:
    """The `python` for a test's own processes: the shim while the suite's stage server runs (a
    script or a multiprocessing child it starts is forked from the server), else this one."""
    shim_dir = os.environ.get("SHRINKFLOW_TEST_SHIM_DIR")
    return str(Path(shim_dir, "python")) if shim_dir else sys.executable


@contextmanager
def spawned_from_server() -> Iterator[None]:
    """multiprocessing's spawned children (``torch.multiprocessing.spawn``) start through
    ``server_python``: forked, with torch imported, instead of a fresh interpreter each."""
    import multiprocessing.spawn

    saved = multiprocessing.spawn.get_executable()
    multiprocessing.spawn.set_executable(server_python())
    try:
        yield
    finally:
        multiprocessing.spawn.set_executable(saved)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- the server ---

def _install_fds(fds: list[int], targets: list[int]) -> None:
    """Give each received descriptor the number the caller had it under: first all above the
    targets, so that installing one never closes another still to be installed."""
    floor = max(targets) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in fds]
    for fd in fds:
        os.close(fd)
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def _name_process(name: str) -> None:
    """What `ps` (and a test) shows for the child, whose command line stays the server's."""
    if os.path.exists("/proc/self/comm"):
        Path("/proc/self/comm").write_text(name[:15])


def _run_script(request: dict, fds: list[int], shim: str) -> None:
    """In the forked grandchild: become ``python ARGV`` in ``cwd`` with ``env``, then exit."""
    code = 1
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)
        _install_fds(fds, request["fds"])
        if request["unbuffered"]:  # `python -u`: every write reaches the file at once
            sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
            sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                          errors="backslashreplace")
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        import multiprocessing.spawn  # its helpers start through the shim, and fork here too

        multiprocessing.spawn.set_executable(shim)
        argv = request["argv"]
        try:
            if argv[0] == "-c":
                _name_process("mp-helper")
                sys.argv = ["-c", *argv[2:]]
                sys.path[0] = ""  # as `python -c` sets it
                exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
            else:
                script = os.path.abspath(argv[0])
                _name_process(Path(script).stem)
                sys.argv = [script, *argv[1:]]
                sys.path[0] = os.path.dirname(script)  # as `python script.py` sets it
                import runpy

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
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed by the script: nothing left to write
                pass
        os._exit(code)


def _handle(conn: socket.socket, shim: str) -> None:
    """In a forked child per connection: fork the script, report its pid, then its exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # waitpid needs its own children
    request, fds = _receive_request(conn)
    if request is None or len(fds) != len(request.get("fds", ())):
        os._exit(1)
    pid = os.fork()
    if pid == 0:
        conn.close()
        _run_script(request, fds, shim)
    for fd in fds:
        os.close(fd)
    try:
        _send(conn, {"pid": pid})
    except OSError:  # the caller is gone
        os.kill(pid, signal.SIGKILL)
    if hasattr(os, "pidfd_open"):  # Linux: if the caller is killed (queue stop --kill), so is it
        script_ended = os.pidfd_open(pid)
        while script_ended not in select.select([conn, script_ended], [], [])[0]:
            if not conn.recv(1):
                os.kill(pid, signal.SIGKILL)
                break
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        _send(conn, {"returncode": code if code >= 0 else 128 - code})  # as a shell reports it
    except OSError:  # the caller is gone: nobody to tell
        pass
    os._exit(0)


def _preload_package() -> None:
    """Import the package's modules that do not bring in ONNX Runtime (its import starts a
    thread): each is imported first in a forked child, which reports what came with it.
    A stage's own imports of the package took 0.14-0.26 CPU-s in each stage process (measured
    per stage script, torch and the rest already imported)."""
    import importlib
    import pkgutil

    import shrinkflow

    for info in pkgutil.walk_packages(shrinkflow.__path__, "shrinkflow."):
        pid = os.fork()
        if pid == 0:
            try:
                importlib.import_module(info.name)
                os._exit(1 if UNFORKABLE & sys.modules.keys() else 0)
            except BaseException:  # noqa: BLE001 - a module that fails is left to its stage
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) == 0:
            importlib.import_module(info.name)


def _serve(address: str, shim: str) -> None:
    for name in PRELOAD:
        __import__(name)
    _preload_package()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if os.path.exists(address):
        os.unlink(address)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address + ".tmp")
    listener.listen(64)
    os.replace(address + ".tmp", address)  # the address exists only once it accepts
    try:
        while True:
            conn, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                _handle(conn, shim)
            conn.close()
    finally:
        listener.close()
        if os.path.exists(address):
            os.unlink(address)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(sys.argv[2], sys.argv[3])
    else:
        _client()
