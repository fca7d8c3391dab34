"""`python -m resnext_dist.bench NAME ...`: see resnext_dist.bench for the benches."""
from resnext_dist.bench import main
from resnext_dist.commandline import exit_without_teardown

if __name__ == "__main__":
    # As the trainer: a finished bench (its JSON written, its MLflow run closed) skips the interpreter's teardown,
    # where native destructors of compile's and gloo's threads were seen to abort it (exit 134) after its table.
    exit_without_teardown(main())
