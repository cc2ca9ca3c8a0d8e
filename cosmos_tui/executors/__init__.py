"""Where a job's engine runs. The local executor (engine subprocesses on this machine's GPUs) still
lives in the daemon; `slurm` submits a job to a Slurm cluster instead (spec `executor = "slurm"`)."""
