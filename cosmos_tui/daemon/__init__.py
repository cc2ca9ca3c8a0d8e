"""The queue daemon: one per user, detached from any terminal, the only writer of the job store.

It listens on a Unix socket (0600, in a 0700 directory) for JSON-line requests, schedules queued
jobs onto free GPUs, runs each on an engine subprocess (`python -m engine.server`, or torchrun for
several GPUs) and stores every event the engine reports. Idle engines stay up, so the next job with
the same model starts warm. The rules (what starts where, what an engine event does to a job) are
the pure core in cosmos_tui/queue; this package carries them out.

  engines.py   engine process groups: spawn, read their output, kill the group
  service.py   the Daemon: the state every handler works on, scheduling, engine events
  handlers.py  one plain function per request, `op_<name>(daemon, request) -> result`
  framing.py   the socket: one JSON object per line each way, dispatch to the handlers
  main.py      daemonising, the single-instance lock, start-up and shutdown
  linger.py    systemd-logind: will the user's processes survive logout?
  notify.py    the done/failed notification hook

Faults it is built for:
  * the daemon killed mid-job: on restart the job is `interrupted`, the queue paused (not auto-run),
    and the job's output directory left alone so a retry of a long video resumes from its chunks;
  * an engine crash or CUDA out-of-memory: that job fails with the reason, OOM pauses the queue,
    other jobs are untouched;
  * a bad request: a one-sentence error back, the daemon keeps going.

Run `python -m cosmos_tui.daemon --detach` (what the client's autostart does) or in the foreground
without the flag (logs to stderr; good for a systemd user unit).
"""
