import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def run_check(script: str, *args: str) -> dict:
    """Run tests/rl/<script> in a fresh process (its own torch.distributed world) and parse its RESULT line."""
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    res = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)],
                         env=dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"), capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.split("RESULT ")[-1])


@pytest.fixture(scope="session")
def fake_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_server.py"), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("fake server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)
