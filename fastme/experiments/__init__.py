"""The paper's experiments, built on :mod:`fastme.analysis` and :mod:`fastme.train`: the toy
experiment (:mod:`~fastme.experiments.toy`), the SE-vs-ME scaling sweep
(:mod:`~fastme.experiments.scale`), the report on one checkpoint (:mod:`~fastme.experiments.report`)
and the page of measured results (:mod:`~fastme.experiments.results`). The commands that run them
are ``fastme experiment toy|scale|results`` and ``fastme analyze`` (fastme/cli/). See
docs/analysis.md.
"""
