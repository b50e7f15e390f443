"""A run stopped by a signal is not a finished one: training saves its checkpoint, its task and flow
end Failed and uncached, and the rerun resumes; a command's temporary Prefect server ends with the
command, `kill -9` included."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from flows.common import load_config
from flows.train import train_flow
from tests.conftest import write_token_corpus, run_flow

REPO = Path(__file__).resolve().parents[1]


def sigterm_when(path: Path, timeout: float = 120) -> threading.Thread:
    """SIGTERM to this process once `path` exists (the first checkpoint: training is under way)."""
    def wait() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread


def test_training_stopped_by_sigterm_fails_uncached_and_the_rerun_resumes(tmp_path):
    write_token_corpus(tmp_path / "corpus" / "tokens")
    cfg = load_config([f"paths.data={tmp_path}", f"corpus.out_dir={tmp_path / 'corpus'}", "logger=none",
                       "model.block_size=32", "data.batch_size=4", "trainer.max_steps=30",
                       "callbacks.checkpoint_every_n_steps=2", "trainer.val_check_interval=1000",
                       "trainer.limit_val_batches=0", "callbacks.sample_every_n_steps=0"])
    last = tmp_path / "checkpoints" / cfg["run_name"] / "last.ckpt"
    sigterm_when(last).join(0)
    stopped = run_flow(train_flow, cfg, return_state=True)
    assert stopped.is_failed(), stopped
    message = stopped.message or str(stopped.result(raise_on_failure=False))
    step = int(message.split("at step ")[1].split()[0])
    assert f"interrupted by SIGTERM at step {step} of 30: rerun to resume" in message and 2 <= step < 30
    resumed = run_flow(train_flow, cfg, return_state=True)  # the same settings: a cached result would come back at once
    assert resumed.is_completed() and resumed.name != "Cached", resumed
    assert resumed.result()["global_step"] == 30


def children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def start_corpus_command(tmp_path: Path) -> tuple[subprocess.Popen, psutil.Process]:
    """`python -m flows.corpus` on the demo sample, once its temporary Prefect server has started."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    command = subprocess.Popen([sys.executable, "-m", "flows.corpus", f"paths.data={tmp_path}", "logger=none"],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        servers = [p for p in children(command.pid) if {"flows.api", "uvicorn"} & set(" ".join(p.cmdline()).split())]
        if servers:
            return command, servers[0]
        time.sleep(0.1)
    command.kill()
    pytest.fail("the command started no temporary Prefect server")


def test_a_temporary_prefect_server_ends_with_a_command_killed_by_sigkill(tmp_path):
    command, server = start_corpus_command(tmp_path)
    command.kill()
    command.wait()
    assert psutil.wait_procs([server], timeout=20)[1] == []  # gone, not orphaned


def test_a_corpus_command_stopped_by_sigterm_fails_in_one_line_and_takes_its_server_along(tmp_path):
    command, server = start_corpus_command(tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "corpus").exists() and time.monotonic() < deadline:  # the flow's first task is writing
        time.sleep(0.1)
    command.send_signal(signal.SIGTERM)
    _, stderr = command.communicate(timeout=120)
    assert command.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("error: stopped by SIGTERM: rerun to resume"), stderr[-2000:]
    assert psutil.wait_procs([server], timeout=20)[1] == []
