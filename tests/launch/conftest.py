"""Fixtures of the launcher tests: a real single-node Slurm cluster on localhost (skipped when it cannot run)."""
from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.launch.slurm_cluster import APT_PACKAGES, LocalSlurm, missing_binaries, try_install


@pytest.fixture(scope="session")
def slurm():
    """slurmctld + slurmd in a temporary directory; skips (with the reason) when Slurm cannot be started.

    Slurm missing and running as root with apt-get: installs slurm-wlm first (S1_TEST_NO_APT=1 to
    forbid that). Not root: skipped, since slurmd must run jobs as the submitting user.
    S1_TEST_NO_SLURM=1 skips these tests outright.
    """
    if os.environ.get("S1_TEST_NO_SLURM"):
        pytest.skip("S1_TEST_NO_SLURM is set")
    if os.geteuid() != 0:
        pytest.skip("a local Slurm cluster needs root (slurmd starts jobs as the submitting user)")
    missing = missing_binaries()
    if missing:
        why = try_install()
        if why is not None or missing_binaries():
            pytest.skip(f"Slurm not available ({', '.join(missing)} missing) and "
                        f"apt-get install {' '.join(APT_PACKAGES)} did not work: {why}")
    # Short path: slurmd puts unix sockets (108-byte limit) in its spool directory.
    root = tempfile.mkdtemp(prefix="s1slurm-", dir="/tmp")
    cluster = LocalSlurm(root)
    try:
        cluster.start()
    except Exception as err:  # noqa: BLE001 - any start failure means "no Slurm here"
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a local Slurm cluster: {err}")
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
