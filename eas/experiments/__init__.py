"""Experiment kinds: one module per kind, selected by ``experiment.name``, on one base.

A kind module defines ``Config`` (the dataclass of its ``experiment.*`` fields: types only,
the values live in ``conf/experiment/<name>.yaml``) and ``run(cfg, out_dir) -> summary``,
usually as a subclass of ``eas.experiments.base.Experiment``, which owns what every kind
shares: the model and benchmark, the seeded split, the unsteered scores, vectors, capture,
scored cells in the store, the manifest, the output folder and the printed headline. It may
define ``validate(cfg)`` (value checks before anything loads) and ``report(runs)`` (tables
of ``eas-report``). Kinds import the base and the methods, never each other.

A new kind is a module here (or anywhere on ``sys.path``, named by ``experiment.module``)
and a ``conf/experiment/<name>.yaml``; nothing else names it.
"""
