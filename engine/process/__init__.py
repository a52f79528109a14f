"""The parent end of a worker's pipe (Trio side).

* :mod:`~engine.process.handle`: ``WorkerHandle``, what the pool needs of a worker
  (a subprocess or a test fake), ``SpawnRequest`` and ``ExitInfo``;
* :mod:`~engine.process.transport`: byte transports (raw pipe fds, Trio streams);
* :mod:`~engine.process.channel`: request/response framing over a transport;
* :mod:`~engine.process.channel_worker`: what real and fake workers share (their
  start-up and stop, ``ChannelWorker.running``, and how their deaths are reported);
* :mod:`~engine.process.spawn`: ``open_process_worker``, one worker subprocess;
* :mod:`~engine.process.launch`: ``Launcher``, a command that runs a worker on
  another host (ssh, kubectl, srun, docker), and per-slot launcher choices;
* :mod:`~engine.process.output`: where the lines workers print go (forwarded to
  this process's stderr, logged or dropped), without ever blocking;
* :mod:`~engine.process.procfs`: process facts read from ``/proc``.

The child end lives in :mod:`engine.workers` and never imports this package;
both ends busy-poll by the one rule in :mod:`engine.busy_poll`.
"""
