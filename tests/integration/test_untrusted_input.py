"""The trainer given hostile paths and URIs, in real processes (issue 25): a FIFO named as model.init is one line,
not a hang that only SIGKILL ends; a secret in tracking.uri, in any shape, is written nowhere: not in the run
directory (config.yaml, log.jsonl, the cursor, checkpoints, export), not in a real MLflow server's store, not on
the console."""
import os
import uuid

import pytest

from resnext_dist.run.lock import read_lease
from tests.plugins.mlflow_server import client_for, runs_in
from tests.tiny import run_train

pytestmark = pytest.mark.slow


def files_holding(root, secret: str):
    """Every file under `root` whose bytes hold `secret` (checkpoints are zip files that store their pickles
    uncompressed, sqlite stores text as is: a byte search finds it wherever it was written)."""
    hits = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    if secret.encode() in f.read():
                        hits.append(path)
    return hits


def test_model_init_naming_a_fifo_is_one_line_and_leaves_the_run_directory_free(tmp_path):
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    run = tmp_path / "run"
    r = run_train(run, [f"model.init={fifo}"], timeout=180)  # it hung, deaf to SIGTERM, before
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == f"error: {fifo}: a FIFO, not a regular file; expected a weights file"
    assert read_lease(str(run)) == {}  # the lock given back: the next trainer is not told the directory is busy


@pytest.mark.mlflow
def test_no_secret_of_tracking_uri_is_written_anywhere(mlflow_server_factory, tmp_path):
    server = mlflow_server_factory()
    host = server.uri.split("://", 1)[1]
    password, token = f"pw{uuid.uuid4().hex}", f"tok{uuid.uuid4().hex}"
    experiment = f"secrets-{uuid.uuid4().hex[:8]}"
    run = tmp_path / "run"
    # Moved to MLflow's variables: the run goes on, tracked, and nothing records them.
    r = run_train(run, ["tracking.enabled=true", f"tracking.uri=http://alice:{password}@{host}/?token={token}",
                        f"tracking.experiment={experiment}", "tracking.timeout_s=2", "checkpoint.every_steps=8",
                        "train.epochs=1"], timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    [mlflow_run] = runs_in(client_for(server.uri), experiment)  # the store was written: the search means something
    assert mlflow_run.data.params["tracking.uri"] == f"http://{host}/"
    assert os.listdir(run / "checkpoints") and os.path.exists(run / "export" / "model.json")
    for secret in (password, token):
        assert files_holding(run, secret) == [] and files_holding(server.workdir, secret) == []
        assert secret not in r.stdout + r.stderr

    # Refused: whatever the name or the place, a secret MLflow cannot take stops the run before anything is written.
    secret = f"s{uuid.uuid4().hex}"
    for i, uri in enumerate([f"http://{host}/?api-key={secret}", f"http://{host}/?X-Amz-Signature={secret}",
                             f"http://{host}/?access-token={secret}", f"http://{host}/?private_token={secret}",
                             f"http://{host}/#token={secret}", f"http://{host}/p;token={secret}"]):
        refused = tmp_path / f"refused{i}"
        r = run_train(refused, ["tracking.enabled=true", f"tracking.uri={uri}", f"tracking.experiment={experiment}"],
                      timeout=120)
        assert r.returncode == 2 and r.stderr.startswith("error: tracking.uri: "), r.stderr[-3000:]
        assert len(r.stderr.strip().splitlines()) == 1 and secret not in r.stdout + r.stderr
        assert not refused.exists()
    assert files_holding(server.workdir, secret) == [] and len(runs_in(client_for(server.uri), experiment)) == 1
