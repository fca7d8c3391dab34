"""The typed config: recipes, overrides, and one clear error per kind of bad input."""
import os
import subprocess
import sys

import pytest
import yaml

from resnext_dist.config import schema as config_schema
from resnext_dist.errors import InputError

from resnext_dist.config import TrainConfig, batch_split, load_config, to_flat_dict, to_yaml, validate

RECIPES = ["configs/quickstart.yaml", "configs/resnext50_imagenet.yaml", "configs/resnext101_imagenet.yaml",
           "configs/resnext152_imagenet.yaml", "configs/cifar100_resnext50.yaml"]
DATA = ["data.train=/d/train.beton", "data.val=/d/val.beton"]


def test_defaults_are_typed_dataclasses():
    cfg = load_config(None, [])
    assert isinstance(cfg, TrainConfig)
    assert cfg.run.name.startswith("run-") and cfg.run.dir == f"runs/{cfg.run.name}"  # run-<identity hash>
    assert type(cfg.model).__name__ == "ModelConfig"


def test_overrides_are_typed_and_interpolations_resolve():
    cfg = load_config(None, ["data.batch_size=64", "model.layers=[1,1,1,1]", "run.name=x", "optim.lr=0.5"])
    assert cfg.data.batch_size == 64 and cfg.model.layers == [1, 1, 1, 1] and cfg.optim.lr == 0.5
    assert cfg.run.dir == "runs/x" and cfg.slurm.folder == "runs/x/slurm"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_with_only_data_paths(recipe):
    cfg = load_config(recipe, DATA if "quickstart" not in recipe else [])
    assert cfg.run.name.startswith(recipe.split("/")[-1][: -len(".yaml")] + "-")


def test_imagenet_recipes_require_data_paths():
    with pytest.raises(InputError, match="data.train is required when data.loader=ffcv"):
        load_config("configs/resnext50_imagenet.yaml", [])


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_sise=3"], r"unknown config key 'data.batch_sise' in command line \(did you mean data.batch_size\?\)"),
    (["modle.arch=x"], r"unknown config key 'modle' .*did you mean model"),
    (["data.batch_size=abc"], r"'data.batch_size'.*'abc'.*Integer"),
    (["train.channels_last=maybe"], r"'train.channels_last'.*maybe"),
    (["optim.lr=0"], r"optim.lr=0.0: must be > 0"),
    (["optim.lr=-1"], r"optim.lr=-1.0: must be > 0"),
    (["model.arch=resnext51"], r"model.arch='resnext51'.*did you mean resnext50_32x4d"),
    (["train.precision=fp8"], r"train.precision='fp8': must be one of bf16, fp16, fp32"),
    (["data.loader=ffcv"], r"data.train is required when data.loader=ffcv"),
    (["model.layers=[1,1,1]"], r"model.layers=\[1, 1, 1\]: must be 4"),
    (["data.batch_size=0"], r"data.batch_size=0: must be > 0"),
    (["checkpoint.resume=/no/such.pt"], r"checkpoint.resume='/no/such.pt': no such checkpoint file"),
    (["noequals"], r"override 'noequals' is not key=value"),
])
def test_bad_input_is_one_clear_line(overrides, message):
    with pytest.raises(InputError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(InputError, match=r"unknown config key 'data.batchsize' in .*bad.yaml \(did you mean data.batch_size"):
        load_config(str(p), [])


def test_any_world_size_shares_the_global_batch_that_has_an_image_for_each_process():
    """The global batch need not divide: 96 on 2 processes of at most 32 = 2 micro-steps of 24 each; on 5, micro-
    batches of 19-20. It only has to give every process an image (and data.batch_size=1 an even share)."""
    cfg = load_config(None, ["data.batch_size=32", "optim.global_batch_size=96"])
    assert batch_split(cfg, 1).accum_steps == 3 and batch_split(cfg, 2).micro_sizes(0) == [24, 24]
    validate(cfg, world_size=5)
    assert batch_split(cfg, 5).sizes_text() == "19-20"
    with pytest.raises(InputError, match=r"^optim.global_batch_size=96 is less than one image per process on 97 "
                                         r"processes: run it on at most 96 processes$"):
        validate(cfg, world_size=97)
    with pytest.raises(InputError, match=r"^data.batch_size=1 cannot share a global batch of 96 among 5 processes"):
        validate(load_config(None, ["data.batch_size=1", "optim.global_batch_size=96"]), world_size=5)
    cfg = load_config(None, ["data.batch_size=32"])  # 0: data.batch_size x world size, one micro-step
    assert batch_split(cfg, 3).global_batch == 96 and batch_split(cfg, 3).accum_steps == 1


def test_yaml_round_trip_and_flat_dict():
    cfg = load_config("configs/quickstart.yaml", ["train.epochs=3"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text)["train"]["epochs"] == 3
    flat = to_flat_dict(cfg)
    assert flat["train.epochs"] == 3 and "model.arch" in flat


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnext_dist.train", *args], capture_output=True, text=True)


def test_cli_print_config_and_help():
    r = run_cli("--config", "configs/quickstart.yaml", "--print-config", "train.epochs=7")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["train"]["epochs"] == 7
    r = run_cli("--help")
    assert r.returncode == 0 and "data.batch_size" in r.stdout and "largest micro-batch a process" in r.stdout


def test_cli_bad_key_exits_2_with_one_line():
    r = run_cli("--config", "configs/quickstart.yaml", "data.batch_sise=3")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "data.batch_sise" in r.stderr


# ---- every value checked at load (#16 item 6)


def _fields():
    yield from config_schema.declared_keys()


def test_every_key_of_the_schema_has_a_rule():
    """A key added without saying what values it takes fails here (booleans need none: the type is the rule)."""
    missing = [key for key, f in _fields() if f.metadata["rule"] is None and f.type not in ("bool", bool)]
    assert not missing, f"declare a rule with these keys (config/schema.py): {missing}"


FLOAT_KEYS = [key for key, f in _fields() if f.type in ("float", float)]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_float_key_takes_nan_or_inf(key, value):
    with pytest.raises(InputError, match=rf"^{key}=-?(nan|inf): must be a finite number$"):
        load_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_size=-8"], r"data.batch_size=-8: must be > 0"),
    (["data.train_res=22400"], r"data.train_res=22400: must be in \[1, 4096\] px"),
    (["data.val_crop_ratio=0.01"], r"data.val_crop_ratio=0.01: must be in \[0.25, 1\]"),
    (["dist.timeout_s=100000000000000"], r"dist.timeout_s=100000000000000: must be in \[1, 10000000\]"),
    (["tracking.uri=http:///x"], r"tracking.uri=.http:///x.: an http\(s\) URI needs a host"),
    (["data.batches_ahead=0"], r"data.batches_ahead=0: must be >= 1"),
    (["data.pad_crop=16", "data.train_res=16"], r"data.pad_crop=16 must be smaller than data.train_res=16"),
    (["optim.momentum=1"], r"optim.momentum=1.0: must be in \[0, 1\)"),
    (["optim.momentum=0"], r"optim.nesterov=true needs optim.momentum > 0"),
    (["optim.label_smoothing=1"], r"optim.label_smoothing=1.0: must be in \[0, 1\)"),
    (["optim.warmup_start_factor=0"], r"optim.warmup_start_factor=0.0: must be in \(0, 1\]"),
    (["optim.milestones=[30,20]"], r"optim.milestones=\[30, 20\]: must be increasing epochs >= 1"),
    (["optim.schedule=poly"], r"optim.schedule='poly': must be one of cosine, step, linear"),
    (["dist.backend=mpi"], r"dist.backend='mpi': must be one of auto, nccl, gloo"),
    (["train.ema_decay=1"], r"train.ema_decay=1.0: must be in \[0, 1\)"),
    (["train.seed=-1"], r"train.seed=-1: must be in \[0, 4294967295\]"),
    (["checkpoint.keep=0"], r"checkpoint.keep=0: must be >= 1"),
    (["tracking.timeout_s=0"], r"tracking.timeout_s=0.0: must be > 0"),
    (["tracking.experiment=''"], r"tracking.experiment='': must not be empty"),
    (["run.name=.."], r"run.name='..': must be a non-empty name without '/'"),
])
def test_bad_values_are_refused_at_load(overrides, message):
    with pytest.raises(InputError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_a_yaml_list_is_one_line(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- model\n- data\n")
    with pytest.raises(InputError, match=r"list.yaml: must be a YAML mapping of sections \(model:, data:, train:, "
                                         r"\.\.\.\), not a list$"):
        load_config(str(p), [])
    p.write_text("data: 3\n")
    with pytest.raises(InputError, match=r"config key 'data' in .*list.yaml must be a mapping of data.\* keys"):
        load_config(str(p), [])


def test_a_run_dir_that_is_a_file_or_cannot_be_made_is_refused_creating_nothing(tmp_path):
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(InputError, match=r"^run.dir='.*afile': exists and is not a directory$"):
        load_config(None, [f"run.dir={f}"])
    with pytest.raises(InputError, match=r"^run.dir='.*afile/run': cannot be created: .*afile is a file$"):
        load_config(None, [f"run.dir={f}/run"])
    with pytest.raises(InputError, match=r"^run.root='.*afile': exists and is not a directory$"):
        load_config(None, [f"run.root={f}", f"run.dir={tmp_path}/r"])  # the default MLflow store goes there
    ok = load_config(None, [f"run.dir={tmp_path}/a/b/c"])
    assert ok.run.dir == f"{tmp_path}/a/b/c" and sorted(os.listdir(tmp_path)) == ["afile"]  # nothing created


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_run_dir_under_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    with pytest.raises(InputError, match=r"run.dir=.*: cannot be created: .*ro is not writable by this user"):
        load_config(None, [f"run.dir={ro}/run"])


# ---- slurm.* values that would break the job script (#16 item 5)


@pytest.mark.parametrize("yaml_slurm, key", [
    (r'partition: "gpu\nsrun rm -rf ~"', "slurm.partition"),
    (r'account: "a\rb"', "slurm.account"),
    (r'qos: "high\e[2J"', "slurm.qos"),
    (r'constraint: "a100\n#SBATCH --uid=0"', "slurm.constraint"),
    (r'job_name: "rx\ttouch"', "slurm.job_name"),
    (r'folder: "/tmp/x\ny"', "slurm.folder"),
    (r'additional_parameters: {mail-type: "END\nrm -rf ~"}', "slurm.additional_parameters"),
    (r'additional_parameters: {"mail-type\nx": END}', "slurm.additional_parameters"),
    (r'additional_parameters: {"--x y": 1}', "slurm.additional_parameters"),
    (r'partition: "gpu\u2028x"', "slurm.partition"),  # a Unicode line separator
])
def test_a_slurm_value_that_breaks_the_sbatch_line_is_refused_naming_the_key(tmp_path, yaml_slurm, key):
    p = tmp_path / "job.yaml"
    p.write_text(f"slurm:\n  {yaml_slurm}\n")
    with pytest.raises(InputError) as e:
        load_config(str(p), [])
    message = str(e.value)
    assert message.startswith(f"{key}=") and message.isprintable()


def test_a_slurm_value_from_the_command_line_never_holds_a_line_break():
    # The shell can pass a real newline (slurm.partition=$'gpu\nx'); whatever YAML makes of it, no line break
    # reaches the config.
    try:
        cfg = load_config(None, ["slurm.partition=gpu\nsrun x", "slurm.account='a\nb'"])
    except InputError as e:
        assert str(e).isprintable()
    else:
        assert cfg.slurm.partition.isprintable() and cfg.slurm.account.isprintable()


# ---- credentials in tracking.uri (#16 item 2)

SECRET_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


@pytest.fixture
def clean_mlflow_env(monkeypatch):
    for k in SECRET_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_credentials_leave_the_uri_for_mlflows_environment(clean_mlflow_env, capsys):
    cfg = load_config(None, ["tracking.uri=http://alice:s3cr%40t@mlflow.example:5000/base?token=tok123"])
    assert cfg.tracking.uri == "http://mlflow.example:5000/base"
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "alice"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "s3cr@t"
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "tok123"
    recorded = to_yaml(cfg) + repr(to_flat_dict(cfg)) + repr(cfg)
    out = capsys.readouterr()
    for secret in ("s3cr", "tok123", "alice"):
        assert secret not in recorded and secret not in out.out + out.err


def test_a_uri_without_credentials_is_kept_exactly():
    from resnext_dist.config.credentials import move_uri_credentials
    for uri in ("sqlite:////tmp/x/mlflow.db", "sqlite:///rel.db", "file:///tmp/m", "http://h:5000/p", "/tmp/mlruns",
                "databricks", "http://[::1]:5000/x", "postgresql://db:5432/mlflow?sslmode=require&connect_timeout=5"):
        assert move_uri_credentials(uri, {}) == uri


def test_credentials_already_in_the_environment_win(clean_mlflow_env):
    clean_mlflow_env.setenv("MLFLOW_TRACKING_PASSWORD", "from-env")
    cfg = load_config(None, ["tracking.uri=https://bob:in-uri@host"])
    assert cfg.tracking.uri == "https://host"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-env" and os.environ["MLFLOW_TRACKING_USERNAME"] == "bob"


def test_a_secret_mlflow_cannot_take_is_refused_without_echoing_it(clean_mlflow_env):
    with pytest.raises(InputError) as e:
        load_config(None, ["tracking.uri=http://host:5000?api_key=hunter2"])
    assert "query item 1 of 1" in str(e.value) and "hunter2" not in str(e.value)
    assert load_config(None, ["tracking.uri=file:///tmp/mlruns"]).tracking.uri == "file:///tmp/mlruns"


def test_credentials_never_reach_the_printed_config(clean_mlflow_env):
    r = run_cli("--config", "configs/quickstart.yaml", "--print-config", "tracking.uri=http://u:pw-xyz@h:5000")
    assert r.returncode == 0, r.stderr
    assert "pw-xyz" not in r.stdout + r.stderr and "uri: http://h:5000" in r.stdout


def test_user_info_in_a_database_uri_is_refused_not_moved(clean_mlflow_env):
    for uri in ("postgresql://ml:dbpass@db/mlflow", "postgresql://dbpass@db/mlflow", "mysql://dbpass:@db/m"):
        with pytest.raises(InputError) as e:
            load_config(None, [f"tracking.uri={uri}"])
        assert "PGPASSWORD" in str(e.value) and "dbpass" not in str(e.value)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ and "MLFLOW_TRACKING_USERNAME" not in os.environ


# ---- secrets by allowlist (#25 item 5): of a URI, only scheme, host, port and path are kept

SECRET = "Zq9SECRETvalue"
SECRET_SHAPES = [  # the shapes, then the class: any name, any place a URI can hold one
    f"http://h:5000?api-key={SECRET}", f"http://h:5000/?X-Amz-Signature={SECRET}", f"http://h?access-token={SECRET}",
    f"https://h/base?private_token={SECRET}", f"http://h:5000#token={SECRET}", f"http://h:5000/p;token={SECRET}",
    f"http://h?{SECRET}", f"http://h?x=1&sig={SECRET}", f"http://h?Password={SECRET}", f"http://h/#{SECRET}",
    f"http://h?{SECRET}=1", f"https://h/a;{SECRET}/b", f"sqlite:////tmp/m.db?key={SECRET}", f"file:///tmp/m#{SECRET}",
    f"postgresql://u:{SECRET}@db/m", f"postgresql://{SECRET}@db/m?sslmode=require", f"mysql://db/m?password={SECRET}",
    f"file:/tmp/m?token={SECRET}", f"databricks://p?token={SECRET}",
]
MOVED_SHAPES = [  # what MLflow takes from its variables: moved, and the run goes on
    (f"http://alice:{SECRET}@h:5000/base", "http://h:5000/base", "MLFLOW_TRACKING_PASSWORD"),
    (f"https://{SECRET}@h", "https://h", "MLFLOW_TRACKING_USERNAME"),
    (f"http://h:5000/?token={SECRET}", "http://h:5000/", "MLFLOW_TRACKING_TOKEN"),
    (f"http://h?access_token={SECRET}", "http://h", "MLFLOW_TRACKING_TOKEN"),
]


@pytest.mark.parametrize("uri", SECRET_SHAPES)
def test_a_secret_in_any_other_part_of_the_uri_is_refused_without_echoing_it(clean_mlflow_env, capsys, uri):
    with pytest.raises(InputError) as e:
        load_config(None, [f"tracking.uri={uri}"])
    message = str(e.value)
    assert message.startswith("tracking.uri: ") and "\n" not in message
    assert SECRET not in message + capsys.readouterr().out and not any(SECRET in os.environ.get(k, "")
                                                                        for k in SECRET_ENV)


@pytest.mark.parametrize("uri, kept, variable", MOVED_SHAPES)
def test_credentials_mlflow_can_take_are_moved_and_only_scheme_host_port_path_stay(clean_mlflow_env, uri, kept,
                                                                                   variable):
    cfg = load_config(None, [f"tracking.uri={uri}"])
    assert cfg.tracking.uri == kept and os.environ[variable] == SECRET
    assert SECRET not in to_yaml(cfg) + repr(to_flat_dict(cfg))


def test_no_query_name_keeps_a_value_in_the_uri(clean_mlflow_env):
    """The allowlist, not a list of secret names: a query item of any name is either a database connection option
    (kept), an http(s) token (moved) or refused; generated names stand for the names nobody listed."""
    from resnext_dist.config.credentials import KEPT_QUERY, move_uri_credentials
    names = ["".join(chr(97 + (i * 7 + j * 3) % 26) for j in range(1 + i % 9)) + sep
             for i in range(200) for sep in ("", "-key", "_token", "Sig")]
    for name in names + ["token", "access_token", *KEPT_QUERY]:
        for uri in (f"http://h:5000/p?{name}={SECRET}", f"postgresql://db/m?{name}={SECRET}"):
            env = {}
            try:
                kept = move_uri_credentials(uri, env)
            except InputError as e:
                assert SECRET not in str(e)
                continue
            assert name.lower() in KEPT_QUERY + ("token", "access_token"), name
            assert SECRET not in kept or name.lower() in KEPT_QUERY  # a connection option is no credential


# ---- one place per key (#24 item 2)


def test_the_quickstarts_run_name_is_stable():
    """Default run names carry the identity hash: the same command must find the same run directory (issue 30
    changed it once: data.batch_size left the identity)."""
    assert load_config("configs/quickstart.yaml", []).run.name == "quickstart-996f84c3"


def test_the_global_batch_names_the_run_and_a_process_batch_does_not():
    """data.batch_size is a process's memory: a smaller one on a resume finds the same run directory; another
    global batch is another run."""
    name = lambda *o: load_config("configs/quickstart.yaml", list(o)).run.name
    assert name("data.batch_size=4") == name() != name("optim.global_batch_size=64")


def _collections_naming_keys():
    """(module, line, keys) for every list/tuple/set/dict literal of the package, outside schema.py, that names
    a config key."""
    import ast
    import resnext_dist

    keys = {name for name, _ in config_schema.declared_keys()}
    root = os.path.dirname(resnext_dist.__file__)
    for folder, _, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(folder, name)
            module = os.path.relpath(path, os.path.dirname(root))
            if not name.endswith(".py") or module == os.path.join("resnext_dist", "config", "schema.py"):
                continue
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.List, ast.Tuple, ast.Set, ast.Dict)):
                    items = [*node.keys, *node.values] if isinstance(node, ast.Dict) else node.elts
                    named = [i.value for i in items if isinstance(i, ast.Constant) and i.value in keys]
                    if named:
                        yield module, node.lineno, named


# The benchmarks' own interface: which keys a bench sets itself and which it shows as columns; neither says
# anything about a key (default, doc, rule, identity, allowed values), so adding a key never touches them.
BENCH_VIEWS = {os.path.join("resnext_dist", "bench", "train.py"), os.path.join("resnext_dist", "bench", "workload.py")}


def test_no_module_but_the_schema_keeps_a_table_of_config_keys():
    found = [hit for hit in _collections_naming_keys() if hit[0] not in BENCH_VIEWS]
    assert not found, f"config keys listed outside config/schema.py (declare what they say with the key): {found}"


def test_a_key_is_one_declaration_that_help_validation_and_identity_read(tmp_path):
    """A section with one more key, declared once: --help shows its doc and default, loading types it and applies
    its rule, and its identity flag decides whether it changes the run's name and may change between attempts."""
    from dataclasses import dataclass, field

    from resnext_dist.config import arguments, key
    from resnext_dist.config.identity import identity_hash
    from resnext_dist.config.rules import non_negative, positive
    from resnext_dist.run.rundir import check_identity

    @dataclass
    class MoreData(config_schema.DataConfig):
        prefetch: int = key(4, positive, "a knob added by one declaration", identity=False)
        mixup: float = key(0.0, non_negative, "another, which makes another run")

    @dataclass
    class MoreConfig(TrainConfig):
        data: MoreData = field(default_factory=MoreData)

    help_text = arguments.describe_keys(("data",), MoreConfig)
    assert "  data.prefetch = 4\n      a knob added by one declaration" in help_text
    run = [f"run.dir={tmp_path}/r", "data.mixup=0.5"]
    cfg = load_config(None, run + ["data.prefetch=6"], schema=MoreConfig)
    assert isinstance(cfg.data, MoreData) and cfg.data.prefetch == 6 and to_flat_dict(cfg)["data.prefetch"] == 6
    with pytest.raises(InputError, match=r"^data.prefetch=0: must be > 0$"):
        load_config(None, run + ["data.prefetch=0"], schema=MoreConfig)
    with pytest.raises(InputError, match=r"'data.prefetch'.*'x'"):  # typed by OmegaConf, as every key
        load_config(None, run + ["data.prefetch=x"], schema=MoreConfig)
    with pytest.raises(InputError, match=r"^data.mixup=-1.0: must be >= 0$"):
        load_config(None, ["data.mixup=-1"], schema=MoreConfig)
    assert identity_hash(cfg) == identity_hash(load_config(None, run, schema=MoreConfig))
    assert identity_hash(cfg) != identity_hash(load_config(None, [f"run.dir={tmp_path}/r", "data.mixup=0.7"],
                                                           schema=MoreConfig))
    old = to_flat_dict(load_config(None, run, schema=MoreConfig))
    assert check_identity(cfg, old) == [("data.prefetch", 4, 6)]  # may change between attempts
    with pytest.raises(InputError, match=r"holds another run \(data.mixup: 0.5 -> 0.7\)"):
        check_identity(load_config(None, [f"run.dir={tmp_path}/r", "data.mixup=0.7"], schema=MoreConfig), old)


def test_slurm_keys_that_contradict_each_other_are_refused_at_load():
    with pytest.raises(InputError, match=r"^slurm.tasks_per_node=2 with slurm.gpus_per_node=8: jobs run one task "):
        load_config(None, ["slurm.tasks_per_node=2"])
    with pytest.raises(InputError, match=r"^slurm.signal_delay_s=3600 is not shorter than slurm.timeout_min=60 "):
        load_config(None, ["slurm.signal_delay_s=3600", "slurm.timeout_min=60"])


# ---- fail early (#25 item 8): the model's size and memory from the config alone; paths that are no files


@pytest.mark.parametrize("model", [
    {}, {"arch": "resnext101_32x8d"}, {"arch": "resnext152_32x4d", "stem": "cifar", "num_classes": 7},
    {"layers": [1, 1, 1, 1], "cardinality": 2, "group_width": 4, "base_channels": 8, "stem": "cifar"},
    {"layers": [2, 1, 3, 1], "cardinality": 3, "group_width": 5, "base_channels": 16, "blurpool": True},
])
def test_the_size_estimate_is_the_built_models(model):
    import torch

    from resnext_dist.config import ModelConfig
    from resnext_dist.models import build_model
    from resnext_dist.models.presets import size_estimate

    cfg = ModelConfig(**model)
    net, res = build_model(cfg), 35 if cfg.stem == "cifar" else 67  # odd sides: the rounding of every stride
    outputs = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, i, out: outputs.append(out.numel()))
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, res, res))
    assert size_estimate(cfg, res) == (sum(p.numel() for p in net.parameters()), sum(outputs))


@pytest.mark.parametrize("override, message", [
    ("model.group_width=100000", "model.group_width=100000: a model of 8.85e+14 parameters (3.54 PB of fp32 weights) "
                                 "is more than this machine's memory"),
    ("model.layers=[3,4,1000000000,3]", "model.layers=[3, 4, 1000000000, 3]: a model of"),
    ("model.num_classes=1000000000", "model.num_classes=1000000000: a model of"),
    ("model.base_channels=1000000", "model.base_channels=1000000: a model of"),
    ("data.batch_size=10000000", "data.batch_size=10000000 at 224 px with model.arch='resnext50_32x4d': training "
                                 "needs at least"),
])
def test_an_absurd_model_or_batch_is_one_line_at_load_never_an_allocation(override, message):
    import time
    t0 = time.monotonic()
    with pytest.raises(InputError) as e:
        load_config(None, [override])
    assert time.monotonic() - t0 < 5 and str(e.value).startswith(message) and "\n" not in str(e.value)


def test_group_width_100000_is_one_line_on_the_command_line():
    r = run_cli("model.group_width=100000", "tracking.enabled=false")
    assert r.returncode == 2 and r.stderr.startswith("error: model.group_width=100000: a model of "), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_a_config_or_checkpoint_path_that_is_a_fifo_is_refused_never_waited_on(tmp_path):
    from tests.unit.test_files import deadline

    os.mkfifo(tmp_path / "recipe.yaml")
    os.mkfifo(tmp_path / "step.pt")
    with deadline(), pytest.raises(InputError, match=r"recipe.yaml: a FIFO, not a regular file; expected a YAML"):
        load_config(str(tmp_path / "recipe.yaml"), [])
    with deadline(), pytest.raises(InputError, match=r"^checkpoint.resume='.*step.pt': a FIFO, not a regular file$"):
        load_config(None, [f"checkpoint.resume={tmp_path / 'step.pt'}"])


def test_a_global_batch_of_zero_is_the_runs_own_never_another_run(tmp_path):
    """optim.global_batch_size=0 means "the run's own": against a recorded 8 (or a recorded 0 of an older
    config.yaml) it is no change of identity, for the trainer and for a sweep resubmitted; 8 against 16 is."""
    from resnext_dist.run.rundir import check_identity

    run = [f"run.dir={tmp_path}/r"]
    recorded = to_flat_dict(load_config(None, run + ["optim.global_batch_size=8"]))
    assert check_identity(load_config(None, run), recorded) == []
    assert check_identity(load_config(None, run + ["optim.global_batch_size=8"]), dict(recorded, **{
        "optim.global_batch_size": 0})) == []
    with pytest.raises(InputError, match=r"holds another run \(optim.global_batch_size: 8 -> 16\)"):
        check_identity(load_config(None, run + ["optim.global_batch_size=16"]), recorded)
