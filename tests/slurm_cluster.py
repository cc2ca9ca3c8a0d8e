"""A real, one-node Slurm cluster on localhost for the Slurm executor's tests.

Debian's slurm-wlm (slurmctld, slurmd, the client commands) and munge, started from a generated
minimal slurm.conf: one node, linear selection, no cgroups (proctrack/linuxproc, task/none), no
accounting database, every state, spool, log and socket file in a private temporary directory.
Nothing of the machine's own Slurm or munge set-up (if any) is read or touched: clients find this
cluster through $SLURM_CONF, and munge through a private socket named in the conf.

`SlurmCluster.start()` raises `ClusterUnavailable` with a one-sentence reason when the packages are
missing or a daemon will not come up; the `slurm_cluster` fixture turns that into a skip whose
reason is printed in the test summary (tests/conftest.py), so a skipped run says why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
INSTALL_HINT = "install them with `apt-get install -y slurm-wlm munge` (.ci/run does)"
START_TIMEOUT_S = 60.0


class ClusterUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why."""


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def render_conf(root: Path, node: str, ctld_port: int, slurmd_port: int, cpus: int, munge_socket: Path,
                clock_rate: int = 1) -> str:
    return "\n".join([
        "ClusterName=cosmostui",
        f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdLogFile={root}/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        # fast turnarounds: a test waits for these, so keep them short
        "KillWait=2",
        f"MinJobAge={3600 * clock_rate}",
        "SlurmctldTimeout=30",
        # on a fast clock (see SlurmCluster) slurmctld's seconds are short: keep the node alive
        f"SlurmdTimeout={60 * clock_rate}",
        "InactiveLimit=0",
        "MessageTimeout=20",
        f"NodeName={node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES",
        "",
    ])


class SlurmCluster:
    """`clock_rate` > 1 runs slurmctld under libfaketime with its clock that many times faster:
    Slurm's time limits are whole minutes, checked every 30 s, so a real time-limit kill takes a
    minute and a half; at 30x it takes a few seconds, through the same code in slurmctld."""

    def __init__(self, root: Path, clock_rate: int = 1):
        self.root = root
        self.clock_rate = clock_rate
        self.node = "ctnode"
        self.partition = "debug"
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        """The variables a client (sbatch, squeue, the daemon) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.out", "ab")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **self.env}, start_new_session=True)
        finally:
            log.close()
        self.procs.append(proc)
        return proc

    def _tail(self, name: str) -> str:
        text = ""
        for p in (self.root / f"{name}.out", self.root / f"{name}.log"):
            if p.is_file():
                text += p.read_text(errors="replace")[-1500:]
        return text.strip().replace("\n", " | ")[-1500:]

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.env}, timeout=30)

    def start(self) -> "SlurmCluster":
        missing = [b for b in BINARIES if shutil.which(b) is None and not os.path.exists(f"/usr/sbin/{b}")]
        if missing:
            raise ClusterUnavailable(f"Slurm/munge are not installed (missing {', '.join(missing)}); {INSTALL_HINT}")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs slurmd as root (it starts jobs as any user); "
                                     "run the Slurm tests as root")
        for d in ("state", "spool", "munge"):
            (self.root / d).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munged = shutil.which("munged") or "/usr/sbin/munged"
        self._spawn("munged", [munged, "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.root}/munge/munged.pid",
                               f"--log-file={self.root}/munge/munged.log",
                               f"--seed-file={self.root}/munge/munged.seed", "--num-threads=2"])
        self._wait(lambda: self.munge_socket.exists(), "munged", "munged")
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(render_conf(self.root, self.node, ctld_port, slurmd_port, os.cpu_count() or 1,
                                         self.munge_socket, self.clock_rate))
        sbin = lambda b: shutil.which(b) or f"/usr/sbin/{b}"  # noqa: E731
        clock = []
        if self.clock_rate != 1:
            if shutil.which("faketime") is None:
                raise ClusterUnavailable("a fast-clock cluster needs libfaketime; install it with "
                                         "`apt-get install -y faketime` (.ci/run does)")
            clock = ["faketime", "-f", f"+0 x{self.clock_rate}"]
        self._spawn("slurmctld", [*clock, sbin("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [sbin("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to be idle in sinfo", "slurmctld")
        return self

    def _node_idle(self) -> bool:
        for p in self.procs:
            if p.poll() is not None:
                raise ClusterUnavailable(f"{Path(p.args[0]).name} exited with code {p.returncode} while starting: "
                                         f"{self._tail(Path(p.args[0]).name)}")
        out = self._run("sinfo", "-h", "-N", "-o", "%T")
        return out.returncode == 0 and out.stdout.strip().rstrip("*") == "idle"

    def _wait(self, pred, what: str, log: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not pred():
            if time.monotonic() > deadline:
                raise ClusterUnavailable(f"Slurm did not come up: no {what} after {START_TIMEOUT_S:.0f} s; "
                                         f"{log}: {self._tail(log)}")
            time.sleep(0.2)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
        # jobs still running are children of slurmd's stepd; with slurmd gone they would linger
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                env = (pid_dir / "environ").read_bytes()
            except OSError:
                continue
            if f"SLURM_CONF={self.conf}".encode() in env.split(b"\0"):
                try:
                    os.kill(int(pid_dir.name), 9)
                except OSError:
                    pass


def _cluster(clock_rate: int = 1):
    root = Path(tempfile.mkdtemp(prefix="ct-slurm-", dir="/tmp"))
    cluster = SlurmCluster(root, clock_rate)
    try:
        cluster.start()
    except (ClusterUnavailable, OSError, subprocess.SubprocessError) as err:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no Slurm test cluster: {err}")
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from _cluster()


@pytest.fixture(scope="session")
def slurm_fast_clock_cluster():
    """slurmctld's clock at 30x: a one-minute time limit strikes after a few real seconds."""
    yield from _cluster(clock_rate=30)
