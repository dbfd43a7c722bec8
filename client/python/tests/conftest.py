"""Shared fixtures of the Python client's tests: the real gpushared daemon (`daemon`, session
scoped: target/debug/gpushared or $GPUSHARED in a temporary runtime directory, with small
transfer limits), a `client` of it, and the GPU-test gate (`require_gpu`)."""

import os
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PKG_ROOT = os.path.dirname(HERE)  # client/python
REPO = os.path.normpath(os.path.join(PKG_ROOT, "..", ".."))
sys.path.insert(0, PKG_ROOT)

import gpushare  # noqa: E402


# gpushared's exit status when no usable Vulkan loader/driver/device exists.
EXIT_NO_DEVICE = 3
NO_DEVICE_MARKERS = (
    "no Vulkan physical device",
    "cannot load the Vulkan loader",
    "ERROR_INCOMPATIBLE_DRIVER",
)


# Small limits so that the host-buffer tests cross the message limit with a few MiB.
MAX_TRANSFER_SIZE = 1 << 20
MAX_HOST_BUFFER_SIZE = 8 << 20
# A short fd.sock idle timeout, so that a kept fd_wait connection goes stale within a test.
FD_IDLE_TIMEOUT_MS = 500
DAEMON_CONFIG = f"""\
[limits]
max_transfer_size = {MAX_TRANSFER_SIZE}
max_host_buffer_size = {MAX_HOST_BUFFER_SIZE}
fd_idle_timeout_ms = {FD_IDLE_TIMEOUT_MS}
"""


def _require_device() -> bool:
    return os.environ.get("GPUSHARE_REQUIRE_GPU") == "1" or os.environ.get("GPUSHARE_REQUIRE_VULKAN") == "1"


class Daemon:
    def __init__(self, proc, runtime_dir, log_path):
        self.proc = proc
        self.runtime_dir = runtime_dir
        self.log_path = log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def client(self, **kw) -> gpushare.Client:
        return gpushare.Client(self.runtime_dir, **kw)


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    binary = os.environ.get("GPUSHARED") or os.path.join(REPO, "target", "debug", "gpushared")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"gpushared not found at {binary}: run `cargo build -p gpushare-server` or set GPUSHARED")
    base = tmp_path_factory.mktemp("gpushare")
    runtime_dir = str(base / "rt")
    log_path = str(base / "gpushared.log")
    config_path = base / "gpushared.toml"
    config_path.write_text(DAEMON_CONFIG)
    env = dict(os.environ)
    env.setdefault("GPUSHARE_LOG", "info")
    env.setdefault("NO_COLOR", "1")  # the daemon colours its log even when it is not a terminal
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--config", str(config_path), "--runtime-dir", runtime_dir],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
        )
    d = Daemon(proc, runtime_dir, log_path)
    control = os.path.join(runtime_dir, "control.sock")
    deadline = time.monotonic() + 20.0
    last_error = None
    try:
        while True:
            rc = proc.poll()
            if rc is not None:
                text = d.log()
                if rc == EXIT_NO_DEVICE or any(m in text for m in NO_DEVICE_MARKERS):
                    msg = f"SKIP: no Vulkan device: gpushared exited {rc}: {text.strip()[-500:]}"
                    if _require_device():
                        pytest.fail(msg + " (GPUSHARE_REQUIRE_GPU/GPUSHARE_REQUIRE_VULKAN is set)")
                    pytest.skip(msg)
                pytest.fail(f"gpushared exited {rc} at startup:\n{text}")
            if os.path.exists(control):
                try:
                    with d.client(session=False, timeout=2.0) as c:
                        c.info()
                    break
                except gpushare.GpushareError as e:
                    last_error = e
            if time.monotonic() > deadline:
                pytest.fail(f"gpushared not ready within 20 s (last error: {last_error}):\n{d.log()}")
            time.sleep(0.05)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise

    yield d

    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"gpushared did not exit within 10 s of SIGTERM:\n{d.log()}")
    assert rc == 0, f"gpushared exited {rc} after SIGTERM:\n{d.log()}"


@pytest.fixture
def client(daemon):
    with daemon.client(client_name="pytest") as c:
        yield c


@pytest.fixture
def info(client):
    return client.info()


def require_gpu(reason: str) -> None:
    """Skips the calling GPU test with `SKIP: <reason>` (shown by scripts/skip-summary), or fails
    it under GPUSHARE_REQUIRE_GPU=1 (the GPU machine)."""
    msg = f"SKIP: {reason}"
    print(msg)
    if os.environ.get("GPUSHARE_REQUIRE_GPU") == "1":
        pytest.fail(msg + " (GPUSHARE_REQUIRE_GPU=1)")
    pytest.skip(msg)
