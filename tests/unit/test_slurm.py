"""resnext_dist.slurm.submit and slurm.job without a cluster: config -> sbatch, the CLI's bad-input paths, the job's environment."""
import os
import signal
import subprocess
import sys

import cloudpickle
import pytest
import submitit

from resnext_dist.slurm import checks as slurm_checks
from resnext_dist.slurm import job as slurm_job
from resnext_dist import submit as submit_command
from resnext_dist.slurm import submit as slurm_submit
from resnext_dist.config import load_config
from resnext_dist.run.signals import StopFlag
from tests.tiny import TINY


def cfg(*overrides, tmp=None):
    extra = [f"run.root={tmp}"] if tmp else []
    return load_config(None, TINY + extra + list(overrides))


def submit_cli(*args):
    """The real command line, in a subprocess (used once: the rest call main() in-process, faster)."""
    return subprocess.run([sys.executable, "launch/submit.py", *args], capture_output=True, text=True, timeout=120)


def submit_main(capsys, *args):
    rc = submit_command.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


# ---- config -> sbatch parameters


def test_one_task_per_gpu_and_one_per_cpu_node():
    assert slurm_checks.tasks_per_node(cfg("slurm.gpus_per_node=8").slurm) == 8
    assert slurm_checks.tasks_per_node(cfg("slurm.gpus_per_node=0").slurm) == 1
    assert slurm_checks.tasks_per_node(cfg("slurm.gpus_per_node=0", "slurm.tasks_per_node=2").slurm) == 2


def test_sbatch_parameters_follow_the_config():
    c = cfg("slurm.nodes=2", "slurm.gpus_per_node=4", "slurm.cpus_per_task=6", "slurm.mem_gb=64",
            "slurm.partition=gpu", "slurm.account=vision", "slurm.qos=high", "slurm.constraint=a100",
            "slurm.exclusive=true", "slurm.timeout_min=90", "slurm.signal_delay_s=180", "slurm.job_name=rx",
            "slurm.additional_parameters={mail-type: END}")
    p = slurm_submit.sbatch_parameters(c.slurm)
    assert p["nodes"] == 2 and p["ntasks_per_node"] == 4 and p["gpus_per_node"] == 4 and p["cpus_per_task"] == 6
    assert p["mem"] == "64GB" and p["time"] == 90 and p["signal_delay_s"] == 180 and p["job_name"] == "rx"
    assert (p["partition"], p["account"], p["qos"], p["constraint"], p["exclusive"]) == \
        ("gpu", "vision", "high", "a100", True)
    assert p["additional_parameters"] == {"mail-type": "END", "requeue": True}
    cpu = slurm_submit.sbatch_parameters(cfg("slurm.gpus_per_node=0").slurm)
    assert "gpus_per_node" not in cpu and "mem" not in cpu and "partition" not in cpu


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    out = submit_cli("--dry-run", *TINY, f"run.root={tmp_path}", "run.name=dry", "slurm.nodes=2",
                     "slurm.gpus_per_node=8", "slurm.timeout_min=60", "slurm.partition=gpu")
    assert out.returncode == 0, out.stderr
    script = out.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --time=60", "#SBATCH --partition=gpu",
                 f"#SBATCH --output={tmp_path}/dry/slurm/%j_0_log.out"):
        assert line in script
    assert "-m submitit.core._submit" in script and "srun" in script and "torchrun" not in script
    assert not (tmp_path / "dry").exists()


def test_print_config_shows_the_slurm_section(tmp_path, capsys):
    rc, out, _ = submit_main(capsys, "--print-config", *TINY, f"run.root={tmp_path}", "slurm.nodes=3")
    assert rc == 0 and "nodes: 3" in out


@pytest.mark.parametrize("override, culprit", [
    ("slurm.nodez=2", "slurm.nodez"),
    ("slurm.nodes=0", "slurm.nodes"),
    ("slurm.cpus_per_task=0", "slurm.cpus_per_task"),
    ("slurm.max_num_timeout=-1", "slurm.max_num_timeout"),
    ("slurm.tasks_per_node=2", "slurm.tasks_per_node"),           # with 8 GPUs: one task per GPU
    ("slurm.signal_delay_s=3600", "slurm.signal_delay_s"),        # >= timeout_min=60
    ("optim.global_batch_size=10", "optim.global_batch_size"),    # less than one image for each of 16 processes
])
def test_config_errors_exit_2_before_anything_is_submitted(tmp_path, monkeypatch, capsys, override, culprit):
    # No sbatch on PATH: had any of these got as far as submitting, the error would name sbatch instead.
    monkeypatch.setenv("PATH", str(tmp_path))
    rc, _, err = submit_main(capsys, *TINY, f"run.root={tmp_path}", "slurm.nodes=2", "slurm.gpus_per_node=8",
                             "data.batch_size=8", "slurm.timeout_min=60", override)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and culprit in lines[0], err
    assert not (tmp_path / "run").exists()


def test_no_slurm_on_this_machine_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no sinfo
    rc, _, err = submit_main(capsys, *TINY, f"run.root={tmp_path}", "slurm.gpus_per_node=0")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "sbatch/sinfo not found" in err


def test_each_check_runs_once_per_submission(tmp_path, monkeypatch, capsys):
    """The config's checks when it loads, the job size's once; nothing checks the same thing again."""
    from resnext_dist.config import load as config_load

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: the submission stops at the cluster checks
    calls = []
    for module, name in ((config_load, "validate"), (slurm_submit, "check_slurm_config")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    rc, _, err = submit_main(capsys, *TINY, f"run.root={tmp_path}", "slurm.gpus_per_node=0")
    assert rc == 2 and "sbatch/sinfo not found" in err
    assert calls == ["validate", "check_slurm_config"]


def test_gpu_counts_read_from_sinfo_gres():
    assert slurm_checks._gpus_in("(null)") == 0
    assert slurm_checks._gpus_in("gpu:8") == 8
    assert slurm_checks._gpus_in("gpu:a100:4(S:0-1)") == 4
    assert slurm_checks._gpus_in("gpu:a100:4(S:0),gpu:v100:2,nic:1") == 6


# ---- what the cluster can run (slurm_checks.check_fits on sinfo's node table)

CPU_CLUSTER = {"debug": [dict(node=f"n{i}", cpus=4, gpus=0, mem_mb=8000, state="idle") for i in (1, 2)]}


def test_a_gpu_request_on_a_cluster_without_gpus_is_refused_naming_gpus():
    s = cfg("slurm.gpus_per_node=8").slurm  # 8 tasks x 10 CPUs would not fit either: the GPUs are the problem
    with pytest.raises(slurm_checks.SlurmOptionError) as e:
        slurm_checks.check_fits(s, CPU_CLUSTER, "debug")
    assert str(e.value) == ("slurm.gpus_per_node=8: the nodes of partition debug have no GPUs (this cluster has "
                            "no GPUs; slurm.gpus_per_node=0 runs on CPUs)")
    mixed = {**CPU_CLUSTER, "gpu": [dict(node="g1", cpus=96, gpus=8, mem_mb=10**6, state="idle")]}
    with pytest.raises(slurm_checks.SlurmOptionError, match=r"no GPUs \(GPU partitions: gpu;"):
        slurm_checks.check_fits(s, mixed, "debug")
    assert slurm_checks.check_fits(s, mixed, "gpu") == ("gpu", 1, 1)


def test_a_cpu_job_that_fits_and_one_that_does_not():
    ok = cfg("slurm.gpus_per_node=0", "slurm.cpus_per_task=2", "slurm.nodes=2").slurm
    assert slurm_checks.check_fits(ok, CPU_CLUSTER, "debug") == ("debug", 2, 2)
    big = cfg("slurm.gpus_per_node=0", "slurm.cpus_per_task=8").slurm
    with pytest.raises(slurm_checks.SlurmOptionError, match=r"^slurm.cpus_per_task=8 x 1 task\(s\) per node = 8 "
                                                             r"CPUs: nodes of partition debug have at most 4 CPUs$"):
        slurm_checks.check_fits(big, CPU_CLUSTER, "debug")


def test_a_line_break_in_a_slurm_value_exits_2_before_anything_is_submitted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch: reaching the submission would say so instead
    recipe = tmp_path / "evil.yaml"
    recipe.write_text('slurm:\n  partition: "debug\\nsrun touch owned"\n')
    rc, out, err = submit_main(capsys, "--dry-run", "--config", str(recipe), *TINY, f"run.root={tmp_path}")
    assert rc == 2 and out == ""
    assert err.startswith("error: slurm.partition='debug\\nsrun touch owned': cannot go on one #SBATCH line")
    assert len(err.strip().splitlines()) == 1


# ---- the job side


def test_requeued_job_resumes_from_the_run_dir_with_the_same_config(tmp_path):
    c = cfg("checkpoint.resume=never", tmp=tmp_path)
    job = slurm_job.TrainJob(c)
    delayed = job.checkpoint()
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    again = cloudpickle.loads(cloudpickle.dumps(delayed)).function
    assert isinstance(again, slurm_job.TrainJob)
    assert again.cfg.checkpoint.resume == "auto"
    assert again.cfg.run == c.run and again.cfg.model == c.model and again.cfg.slurm == c.slurm


@pytest.mark.parametrize("result", ["success", "error", None])
def test_a_finished_task_ends_without_teardown_only_once_submitit_saved_its_success(tmp_path, result):
    pkl = tmp_path / "0_0_result.pkl"
    if result:
        pkl.write_bytes(cloudpickle.dumps((result, "run dir")))
    script = ("import atexit, sys\n"
              "atexit.register(print, 'teardown ran')  # registered first: runs after the job's handler\n"
              "from resnext_dist.slurm.job import end_once_result_saved\n"
              f"atexit.register(end_once_result_saved, {str(pkl)!r})\n"
              "sys.exit(3)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    if result == "success":
        assert (r.returncode, r.stdout) == (0, "")
    else:  # no success saved: the usual exit, its status and the rest of the teardown
        assert (r.returncode, r.stdout) == (3, "teardown ran\n")


def test_submitit_handler_is_found_behind_the_trainers_stop_flag():
    calls = []

    def submitit_like(signum, frame):  # stands in for submitit's bound SignalHandler method
        calls.append(signum)

    old = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        flag = StopFlag().install()
        try:
            assert slurm_job.submitit_signal_handler() is submitit_like  # flag still installed
        finally:
            flag.restore()
        assert slurm_job.submitit_signal_handler() is submitit_like      # after restore()
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        assert slurm_job.submitit_signal_handler() is None
    finally:
        signal.signal(signal.SIGUSR2, old)


SLURM_TASK_ENV = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "n[1-2]",
                  "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
                  "SLURM_NODEID": "1"}


def _exported(monkeypatch, gpus, **extra):
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
              "CUDA_VISIBLE_DEVICES", "SLURM_RESTART_COUNT", "SLURM_CPUS_PER_TASK"):
        # setenv first: monkeypatch then undoes what export_dist_env writes (a RANK=3 left behind would silence
        # every later trainer subprocess of the session: only rank 0 prints)
        monkeypatch.setenv(k, "")
        monkeypatch.delenv(k)
    for k, v in {**SLURM_TASK_ENV, **extra}.items():
        monkeypatch.setenv(k, v)
    slurm_job.export_dist_env(submitit.JobEnvironment(), gpus=gpus)
    return {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                           "LOCAL_WORLD_SIZE", "CUDA_VISIBLE_DEVICES")}


def test_each_task_gets_rank_world_and_master_from_slurm(monkeypatch):
    env = _exported(monkeypatch, gpus=False, RANK="7", MASTER_ADDR="stale")  # stale values from the shell
    assert env["MASTER_ADDR"] == "n1"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("3", "4", "1", "2")
    assert env["CUDA_VISIBLE_DEVICES"] is None
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000


def test_every_attempt_of_a_job_gets_a_fresh_port(monkeypatch):
    first = _exported(monkeypatch, gpus=False)["MASTER_PORT"]
    assert _exported(monkeypatch, gpus=False)["MASTER_PORT"] == first  # all tasks of one attempt agree
    assert _exported(monkeypatch, gpus=False, SLURM_RESTART_COUNT="1")["MASTER_PORT"] != first


def test_each_task_sees_its_own_gpu_of_those_slurm_gave_the_job(monkeypatch):
    assert _exported(monkeypatch, gpus=True, CUDA_VISIBLE_DEVICES="4,5")["CUDA_VISIBLE_DEVICES"] == "5"
    assert _exported(monkeypatch, gpus=True)["CUDA_VISIBLE_DEVICES"] == "1"
