"""A throw-away single-node Slurm cluster on localhost (slurmctld + slurmd), for the launcher tests.

Everything lives in one temporary directory: slurm.conf, state, spool, logs, pid files. Clients find
it through SLURM_CONF (see `LocalSlurm.env`). Authentication is auth/none + cred/none, so no munge
daemon or key is needed; the daemons run as root (slurmd has to start jobs as the submitting user).

Standalone use (for trying the sbatch scripts by hand):

    python tests/launch/slurm_cluster.py /tmp/s1slurm      # starts it, prints `export SLURM_CONF=...`
    python tests/launch/slurm_cluster.py /tmp/s1slurm --stop
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

SBIN_DIRS = ["/usr/sbin", "/usr/local/sbin", "/sbin"]
# The Debian/Ubuntu package: slurmctld, slurmd and the client commands (sbatch, srun, scontrol, ...).
APT_PACKAGES = ["slurm-wlm"]


def find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def missing_binaries() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
            if find_binary(b) is None]


def try_install(timeout: float = 240.0) -> str | None:
    """apt-get install slurm-wlm when root on a Debian-like system. Returns None or why it did not work."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("apt-get") is None:
        return "no apt-get"
    if os.environ.get("S1_TEST_NO_APT"):
        return "S1_TEST_NO_APT is set"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    deadline = time.monotonic() + timeout
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *APT_PACKAGES]
    for cmd in (install, ["apt-get", "update", "-q"], install):
        left = deadline - time.monotonic()
        if left <= 0:
            return f"apt-get install {' '.join(APT_PACKAGES)} took more than {timeout:.0f}s"
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=left)
        except subprocess.TimeoutExpired:
            return f"apt-get install {' '.join(APT_PACKAGES)} took more than {timeout:.0f}s"
        if cmd is install and proc.returncode == 0 and not missing_binaries():
            return None
    return f"apt-get install {' '.join(APT_PACKAGES)} failed: {proc.stderr.strip()[-300:]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """slurmctld + slurmd for one CPU-only node named after this host, partition `debug`."""

    def __init__(self, root: str, cpus: int | None = None):
        self.root = os.path.abspath(root)
        self.conf = os.path.join(self.root, "slurm.conf")
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def write_config(self) -> None:
        for sub in ("state", "spool", "log"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        r = self.root
        lines = [
            "ClusterName=s1test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/none",
            "CredType=cred/none",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd.pid",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",  # no cgroups needed (containers, CI)
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=30",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        ]
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        self.write_config()
        log = open(os.path.join(self.root, "log", "daemons.out"), "ab")
        # -D: stay in the foreground, so these Popen handles are the daemons themselves.
        self.procs.append(subprocess.Popen([find_binary("slurmctld"), "-D", "-i", "-f", self.conf],
                                           env=self.env, stdout=log, stderr=log, start_new_session=True))
        self.procs.append(subprocess.Popen([find_binary("slurmd"), "-D", "-f", self.conf, "-N", self.node],
                                           env=self.env, stdout=log, stderr=log, start_new_session=True))
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Slurm daemon exited ({p.args[0]}, code {p.returncode}): "
                                       f"{self.log_tail()}")
            proc = subprocess.run(["sinfo", "-h", "-n", self.node, "-o", "%T"], env=self.env,
                                  capture_output=True, text=True)
            state = proc.stdout.strip()
            if state.startswith("idle") or state.startswith("mix"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.node} not idle after {timeout:.0f}s (state {state!r}): {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "daemons.out"):
            path = os.path.join(self.root, "log", name)
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    out.append(f"--- {name}\n{f.read()[-chars:]}")
        return "\n".join(out)

    # ---- client helpers --------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=kw.pop("env", self.env), capture_output=True, text=True, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol show job -o, as a dict (JobState, Restarts, ExitCode, ...); {} once forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields = {}
        for item in proc.stdout.split():
            key, sep, value = item.partition("=")
            if sep:
                fields.setdefault(key, value)
        return fields

    def wait_job(self, job_id: str, predicate, timeout: float, what: str = "") -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info and predicate(info):
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id}: {what or 'condition'} not reached in {timeout:.0f}s; last {info}")

    # ---- teardown --------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.procs:
            subprocess.run(["scancel", "--user", "root", "--full"], env=self.env, capture_output=True)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # let slurmd finish the steps before it goes away
                proc = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=self.env,
                                      capture_output=True, text=True)
                if proc.returncode != 0 or not any(w in proc.stdout for w in ("RUNNING", "COMPLETING",
                                                                              "CONFIGURING")):
                    break
                time.sleep(0.5)
        for p in reversed(self.procs):  # slurmd first, then slurmctld
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()
        for pid in self.stray_stepds():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stray_stepds(self) -> list[int]:
        """slurmstepd processes of this cluster (SLURM_CONF in their environment) still alive."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/comm", "rb") as f:
                    if f.read().strip() != b"slurmstepd":
                        continue
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if mine in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                continue
        return found


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="directory for the cluster's files")
    ap.add_argument("--stop", action="store_true", help="stop the daemons started in ROOT")
    args = ap.parse_args(argv)
    cluster = LocalSlurm(args.root)
    if args.stop:
        for name in ("slurmd.pid", "slurmctld.pid"):
            path = os.path.join(cluster.root, name)
            if os.path.exists(path):
                with open(path) as f:
                    pid = int(f.read().strip() or 0)
                if pid:
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        return 0
    missing = missing_binaries()
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install {' '.join(APT_PACKAGES)}", file=sys.stderr)
        return 1
    cluster.start()  # the daemons run in their own sessions and outlive this script
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
