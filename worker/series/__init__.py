"""Study level: one ``series-summary.v1`` record per series, from the findings.

:mod:`worker.series.summary` accumulates a series' findings into its summary (pure);
:mod:`worker.series.tracker` decides when a series is due (its study announced complete by the
gateway, or quiet) and which offsets must stay uncommitted; :mod:`worker.series.service` is
``scanstream summarize``, the consumer that ties them to Kafka.
"""
