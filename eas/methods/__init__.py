"""Steering-vector methods: one module per method, selected by ``method.name``.

A method module that extracts its vector from train activations defines two functions:

- ``contrast(items, predicted, prompter, seed) -> Contrast``: which texts are positives and
  which negatives, given the train items and the unsteered model's answers to them;
- ``aggregate(positives, negatives, seed) -> Tensor``: ``[n, d_model]`` activations of each
  side at one layer to a ``[d_model]`` direction.

A method whose vectors are made by another experiment (``refined``, by ``experiment=cmaes``) defines instead
``stored_key(base_key, source, site, layer) -> str`` (where that experiment puts them in
the store) and ``MISSING`` (what to run first). Any method reads its vectors from files
instead when ``method.vector_path`` is set (``eas.methods.base.read_vectors``).

A new method is a module here (or anywhere on ``sys.path``, named by ``method.module``) and
a ``conf/method/<name>.yaml``; nothing else names it.
"""
