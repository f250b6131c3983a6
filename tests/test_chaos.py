"""Kill it anywhere: run-folder locks, crash-safe checkpoints, safe --resume, Ctrl-C/SIGTERM, full disks,
file modes; and the chaos test (SIGKILL a training run at random moments, resume, compare)."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from medl2b.cli import app
from medl2b.config import load_config
from medl2b.errors import DiskFullError, RunInterrupted, atomic_dir, atomic_file
from medl2b.runlock import LOCK_NAME, RunLockedError, run_lock
from medl2b.train.trainer import LATEST, PREVIOUS, Trainer, train

TINY = {"features": [4, 4, 8, 8, 16, 4], "batch_size": 4, "meta_batch_size": 4, "steps_per_epoch": 2}
TINY_CLS = {"arch": "resnet50", "pretrained": "none", "width": 0.0625, "image_size": 32, "batch_size": 8, "meta_batch_size": 8, "steps_per_epoch": 4}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def seg_cfg(data, out, **kw):
    return load_config("prostate-seg", profile="cpu", overrides={
        "data": str(data), "out": str(out), "epochs": 2, "warmup_epochs": 1, "device": "cpu", **TINY, **kw})


def rows_of(run):
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in csv.DictReader(fh)]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _holder(folder, what="train"):
    """A separate process that holds ``folder``'s lock until its stdin closes."""
    code = ("import sys; from medl2b.runlock import run_lock\n"
            f"with run_lock({str(folder)!r}, what={what!r}):\n"
            "    print('held', flush=True); sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ----------------------------------------------------------------------------------- the lock
def test_a_second_writer_is_refused_with_one_line_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        with pytest.raises(RunLockedError, match=f"in use by pid {holder.pid} ") as err:
            with run_lock(run, what="eval"):
                pass
        assert str(run) in str(err.value) and "medl2b train" in str(err.value)
        for args in (["eval", str(run)], ["audit", str(run)]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 2, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {run}: in use by pid {holder.pid}"), lines
        cfg = load_config("prostate-seg", profile="cpu", overrides={"out": str(run), "data": str(tmp_path)})
        with pytest.raises(RunLockedError):
            train(cfg)
        with pytest.MonkeyPatch.context() as mp:  # torchrun: only rank 0 takes the lock
            mp.setenv("RANK", "1")
            with run_lock(run):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (run / LOCK_NAME).exists()  # a clean exit removes the lock file
    with run_lock(run, what="eval"), run_lock(run, what="train"):  # re-entrant within a process
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()
    assert "warning" not in capsys.readouterr().err


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, capsys):
    run = tmp_path / "run"
    holder = _holder(run)
    holder.kill()  # SIGKILL: the kernel drops the flock, the lock file stays
    holder.wait(timeout=30)
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid
    with run_lock(run):
        pass
    err = capsys.readouterr().err
    assert f"taking over the lock left by pid {holder.pid}" in err and str(run) in err
    # the flock still held (an orphaned loader worker of a killed run), but the recorded process is gone
    other = _holder(run)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        record = json.loads((run / LOCK_NAME).read_text())
        (run / LOCK_NAME).write_text(json.dumps({**record, "pid": dead.pid}))
        with run_lock(run):
            assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert f"taking over the lock of pid {dead.pid}" in capsys.readouterr().err
    finally:
        other.stdin.close()
        other.wait(timeout=30)


# ----------------------------------------------------------------------------------- file modes
def test_outputs_follow_the_umask(promise12_prepared, tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "dataset.json").write_text("{}")
        run = tmp_path / "run"
        train(seg_cfg(promise12_prepared, run, method="ce", epochs=1, warmup_epochs=0, steps_per_epoch=1),
              progress=False)
        os.umask(0o077)
        with atomic_file(tmp_path / "private.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    for name in ("config.yaml", "metrics.csv", LATEST, "checkpoint_best.pt", "train.log"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


# ----------------------------------------------------------------------------------- checkpoints and --resume
def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(promise12_prepared, tmp_path, monkeypatch):
    run = tmp_path / "full"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second epoch's checkpoint: the disk fills up half-way
            f.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = ["train", "--task", "prostate-seg", "--data", str(promise12_prepared), "--out", str(run), "--method", "ce",
            "--profile", "cpu", "--epochs", "2", "--set", "warmup_epochs=0", "--set", "features=[4,4,8,8,16,4]",
            "--set", "steps_per_epoch=1", "--set", "batch_size=4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines == [f"error: no space left on device writing {run / LATEST}; the one already there is intact"]
    assert "Traceback" not in result.output
    assert torch.load(run / LATEST, weights_only=False)["epoch"] == 1
    assert not list(run.glob("*.tmp")) and not (run / LOCK_NAME).exists()
    with pytest.raises(DiskFullError, match="no space left on device writing .*metrics.csv"):
        with atomic_file(run / "metrics.csv") as tmp:
            raise OSError(errno.ENOSPC, "No space left on device")
    assert len(rows_of(run)) == 1


def test_resume_falls_back_to_the_previous_checkpoint_when_the_latest_is_truncated(promise12_prepared, tmp_path):
    run = tmp_path / "trunc"
    cfg = lambda: seg_cfg(promise12_prepared, run, method="l2b", epochs=3)  # noqa: E731
    train(cfg(), progress=False)
    final = torch.load(run / LATEST, weights_only=False)
    assert torch.load(run / PREVIOUS, weights_only=False)["epoch"] == 2
    rows = rows_of(run)
    data = (run / LATEST).read_bytes()
    (run / LATEST).write_bytes(data[: len(data) // 2])  # a crash mid-write on a file system without rename
    resumed = Trainer(cfg(), resume=True, progress=False)
    assert resumed.epoch == 2 and len(rows_of(run)) == 2  # metrics.csv rebuilt from the checkpoint's history
    log = (run / "train.log").read_text()
    assert "cannot read checkpoint" in log and f"resuming from {run / PREVIOUS} (epoch 2) instead" in log
    resumed.fit()
    assert same_weights(final["model"], resumed.model.state_dict())
    assert rows_of(run) == rows
    assert torch.load(run / PREVIOUS, weights_only=False)["epoch"] == 2  # the good one was not pushed out


def test_resume_is_safe_to_repeat(promise12_prepared, tmp_path):
    """No checkpoint yet: start from the beginning. Finished: report the numbers, change nothing."""
    run = tmp_path / "again"
    args = ["train", "--task", "prostate-seg", "--data", str(promise12_prepared), "--out", str(run), "--method", "ce",
            "--profile", "cpu", "--epochs", "1", "--set", "warmup_epochs=0", "--set", "features=[4,4,8,8,16,4]",
            "--set", "steps_per_epoch=1", "--set", "batch_size=4", "--resume"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "no checkpoint to resume from yet; starting the run from the beginning" in first.output
    score = float(rows_of(run)[0]["val_score"])
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file()}
    second = CliRunner().invoke(app, args[:9] + ["--resume"])  # no --epochs: the run's own config counts
    assert second.exit_code == 0, second.output
    assert f"already finished its 1 epochs: last val_dice {score:.4f}, best {score:.4f}" in second.output
    assert second.output.strip().endswith(f"finished 1 epochs in {run}: last validation score {score:.4f}")
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir() if p.is_file() and
             p.name not in ("train.log", "metrics.csv")}
    assert after == {k: v for k, v in files.items() if k not in ("train.log", "metrics.csv")}
    assert (run / "metrics.csv").read_bytes() == files["metrics.csv"][1]


# ----------------------------------------------------------------------------------- Ctrl-C and SIGTERM
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_a_signal_mid_epoch_saves_the_exact_state_and_the_resume_matches(task, promise12_prepared, isic_prepared,
                                                                          tmp_path):
    """SIGTERM (seg) / SIGINT (cls) inside the second epoch, after its first step: the run stops at
    the step boundary with a mid-epoch checkpoint; the resume replays the loaders to that step and
    ends with the uninterrupted run's weights, sample record and metrics."""
    def cfg(out):
        if task == "seg":  # the amortised step: v of step 1 is reused at step 2, across the interruption
            return seg_cfg(promise12_prepared, out, method="l2b", epochs=2, meta_every=2, steps_per_epoch=3)
        return load_config("skin-lesion-cls", profile="cpu", overrides={  # ISIC items draw augmentation seeds
            "data": str(isic_prepared), "out": str(out), "epochs": 2, "warmup_epochs": 1, "device": "cpu",
            "method": "l2b", **TINY_CLS})

    straight = Trainer(cfg(tmp_path / "a"), progress=False)
    straight.fit()

    stopped = Trainer(cfg(tmp_path / "b"), progress=False)
    original_step = stopped.train_step
    signum = signal.SIGTERM if task == "seg" else signal.SIGINT

    def step_then_signal(batch, meta_batch, stats, **kwargs):
        original_step(batch, meta_batch, stats, **kwargs)
        if stopped.epoch == 1 and kwargs["step"] == 0:
            os.kill(os.getpid(), signum)  # through the real handler

    stopped.train_step = step_then_signal
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as err:
        stopped.fit()
    assert err.value.signum == signum and "epoch 2, step 1/" in err.value.where
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored
    state = torch.load(tmp_path / "b" / LATEST, weights_only=False)
    assert state["epoch"] == 1 and state["partial"]["step"] == 1
    assert torch.load(tmp_path / "b" / PREVIOUS, weights_only=False)["partial"] is None  # end of epoch 1

    resumed = Trainer(cfg(tmp_path / "b"), resume=True, progress=False)
    resumed.fit()
    assert same_weights(straight.model.state_dict(), resumed.model.state_dict())
    assert torch.equal(straight.record.totals, resumed.record.totals)
    assert rows_of(tmp_path / "a") == rows_of(tmp_path / "b")
    assert torch.load(tmp_path / "b" / LATEST, weights_only=False)["partial"] is None


# ----------------------------------------------------------------------------------- chaos
# Every start of ``medl2b train`` is a fork of one "zygote" process that imported torch, MONAI and
# medl2b once: a fresh interpreter would spend most of this test importing (20 s a start on a busy
# 2-core machine). The child runs the real command line (``medl2b.cli.app``) with its own pid, run
# folder lock and signal handling, and dies of SIGKILL like any process.
ZYGOTE = """
import json, os, sys
import torch, monai  # noqa: F401
import medl2b.cli, medl2b.config, medl2b.tasks, medl2b.models, medl2b.train.trainer  # noqa: F401
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 0
        try:
            medl2b.cli.app(args=job["args"], prog_name="medl2b")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    print("pid", pid, flush=True)
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Zygote:
    def __init__(self):
        import queue
        import threading

        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=ENV)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.lines.put(line.split()) for line in self.proc.stdout],
                         daemon=True).start()
        assert self.lines.get(timeout=600) == ["ready"]

    def start(self, args, log) -> int:
        self.proc.stdin.write(json.dumps({"args": args, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        kind, pid = self.lines.get(timeout=60)
        assert kind == "pid"
        return int(pid)

    def wait(self, timeout) -> int | None:
        """The child's exit code (negative: killed by that signal), or None if still running."""
        import queue

        try:
            kind, code = self.lines.get(timeout=timeout)
        except queue.Empty:
            return None
        assert kind == "exit"
        return int(code)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _train_args(data, run, extra=()):
    return ["train", "--task", "prostate-seg", "--data", str(data), "--out", str(run), "--method", "l2b",
            "--profile", "cpu", "--device", "cpu", "--epochs", "6", "--set", "warmup_epochs=2",
            "--set", "features=[4,4,8,8,16,4]", "--set", "batch_size=4", "--set", "meta_batch_size=4",
            "--set", "steps_per_epoch=3", "--set", "meta_every=2", "--set", "meta_set=gmm", *extra]


@pytest.mark.slow
def test_chaos_sigkill_at_random_moments_then_resume_matches_the_uninterrupted_run(promise12_prepared, tmp_path):
    """An uninterrupted 6-epoch l2b run (online GMM meta set, meta_every=2), then the same run killed
    at seeded random moments (5 SIGKILLs, plus a SIGTERM and a SIGINT, which stop at a step boundary
    with a mid-epoch checkpoint) and restarted with ``--resume`` each time (the first start too: with
    no checkpoint it starts the run) until it finishes. The final metrics.csv (all but time_s), the
    weights and the audit record equal the uninterrupted run's."""
    zygote = Zygote()
    try:
        straight = tmp_path / "straight"
        t0 = time.monotonic()
        zygote.start(_train_args(promise12_prepared, straight), tmp_path / "straight.log")
        ready = code = None
        while code is None:  # when does training start (data, model)?
            code = zygote.wait(0.02)
            if ready is None and (straight / "config.yaml").exists():
                ready = time.monotonic() - t0
        training = time.monotonic() - t0 - ready
        assert code == 0, (tmp_path / "straight.log").read_text()[-3000:]

        rng = random.Random(24)
        plan = [signal.SIGKILL, signal.SIGKILL, signal.SIGTERM, signal.SIGKILL, signal.SIGKILL, signal.SIGKILL,
                signal.SIGINT]
        run, log_file = tmp_path / "chaos", tmp_path / "chaos.log"
        history = []
        while len(history) < len(plan):
            sig = plan[len(history)]
            before = torch.load(run / LATEST, weights_only=False)["epoch"] if (run / LATEST).exists() else None
            # a random moment in what is left of the run (estimated from the uninterrupted one), so the
            # kills spread over all epochs and the run does not finish before the plan does
            delay = ready + rng.uniform(0.15, 0.6) * training * (6 - (before or 0)) / 6
            pid = zygote.start(_train_args(promise12_prepared, run, ["--resume"]), log_file)
            code = zygote.wait(delay)
            if code is not None:  # it finished before the kill
                break
            os.kill(pid, sig)
            code = zygote.wait(300)
            history.append((sig.name, round(delay, 2), before, code))
            if sig == signal.SIGKILL:
                assert code == -signal.SIGKILL
            elif code == 0:  # arrived in the last epoch's last step: the run finished
                break
            else:  # stopped at a step boundary (130 / 143), or in start-up by Python's default
                assert code in (128 + sig, -sig, 130), log_file.read_text()[-3000:]
        else:
            zygote.start(_train_args(promise12_prepared, run, ["--resume"]), log_file)
            code = zygote.wait(600)
        assert code == 0, log_file.read_text()[-3000:]
    finally:
        zygote.close()
    print("\ninterruptions (signal, delay s, epochs in the checkpoint before, exit code):", history)
    kills = sum(1 for entry in history if entry[0] == "SIGKILL")
    assert kills >= 5, history
    assert sum(1 for entry in history if entry[2] is not None) >= 4, history  # most hit a run under way
    out = log_file.read_text()
    assert "no checkpoint to resume from yet; starting the run from the beginning" in out
    stopped = sum(1 for entry in history if entry[3] in (130, 143))
    assert stopped >= 1 and out.count(f"resume with: medl2b train --out {run} --resume") == stopped
    a = torch.load(straight / LATEST, weights_only=False)
    b = torch.load(run / LATEST, weights_only=False)
    assert b["epoch"] == 6 and b["partial"] is None
    assert same_weights(a["model"], b["model"])
    assert torch.equal(a["record"]["totals"], b["record"]["totals"])
    assert a["online_meta"] == b["online_meta"]
    assert rows_of(straight) == rows_of(run) and len(rows_of(run)) == 6
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_exactly(promise12_prepared, tmp_path):
    """Two Gloo processes under ``torchrun --max-restarts=1``: rank 0 (its pid is in the run folder's
    lock) is SIGKILLed after the first epoch's checkpoint; torchrun restarts both workers, which
    resume on their own (TORCHELASTIC_RESTART_COUNT > 0) and end as an uninterrupted run does."""
    def launch(run):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--max-restarts=1", "--monitor-interval=0.2", "-m", "medl2b.cli", "train", "--task", "prostate-seg",
               "--data", str(promise12_prepared), "--out", str(run), "--method", "l2b", "--profile", "cpu",
               "--epochs", "3", "--device", "cpu", "--set", "warmup_epochs=1", "--set", "features=[4,4,8,8,16,4]",
               "--set", "batch_size=4", "--set", "meta_batch_size=4", "--set", "steps_per_epoch=3"]
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    straight, run = tmp_path / "straight", tmp_path / "killed"
    proc = launch(straight)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]

    proc = launch(run)
    while not (run / LATEST).exists():
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.05)
    time.sleep(random.Random(24).uniform(0.0, 1.0))  # somewhere in the second epoch
    killed = json.loads((run / LOCK_NAME).read_text())["pid"]
    epoch = torch.load(run / LATEST, weights_only=False)["epoch"]
    os.kill(killed, signal.SIGKILL)
    out = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, out[-3000:]
    log = (run / "train.log").read_text()
    assert epoch < 3 and f"taking over the lock left by pid {killed}" in out
    assert "resumed from" in log and "all 2 processes hold identical weights" in log
    a = torch.load(straight / LATEST, weights_only=False)
    b = torch.load(run / LATEST, weights_only=False)
    assert b["epoch"] == 3 and same_weights(a["model"], b["model"])
    assert torch.equal(a["record"]["totals"], b["record"]["totals"])
    assert rows_of(straight) == rows_of(run)
