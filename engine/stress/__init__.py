"""The stress-test runner (``engine stress``): workload, chaos, report.

* :mod:`~engine.stress.runner`: ``run_stress`` and its configuration;
* :mod:`~engine.stress.workload`: the callers and what they record;
* :mod:`~engine.stress.chaos`: the killer task and the death ledger;
* :mod:`~engine.stress.report`: the report (figures and invariants) of one run;
* :mod:`~engine.stress.text`, :mod:`~engine.stress.html`,
  :mod:`~engine.stress.live`: its text (rich or plain), HTML and live renderings.
"""
