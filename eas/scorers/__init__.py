"""Scorers of generated text: one module per scorer, named in ``experiment.scorers``.

A scorer module defines ``make(params, ctx) -> score``, where ``score(samples)`` returns
``{column: [one float per sample]}`` (column names start with the scorer's name), and may
define ``validate(params, field)`` (value checks before anything loads, raising a
``ConfigError`` that names ``field.<key>``; a ``validate(params)`` is called without the
field), ``columns(params)`` (the columns it will write, so a config naming another is an
error before generating) and ``VERSION`` (part of every score record's key: bump it when the
scorer's numbers change). Like every extension point, a scorer outside eas is a dotted import
path (``experiment.scorers={toxicity: {scorer: my_lab.scorers.toxicity}}``). The shared types
and the one check of every scorer's output are in ``eas.scorers.base``.
"""
