"""One training run: the trainer's phases (trainer.py), the step and exact evaluation (step.py), what a run is made
of (build.py), its directory (rundir.py: identity, DONE; lock.py: one live trainer), its checkpoints
(checkpoint.py), its console (console.py), stop signals (signals.py) and the fault injection the tests use
(faults.py). Its record, log.jsonl, is resnext_dist/runlog.py: the run writes it, everything that reports reads it."""
