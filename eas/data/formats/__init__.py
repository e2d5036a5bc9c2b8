"""Data formats: one module per upstream layout, named by ``benchmark.format`` or ``prompts.format``.

A benchmark format defines ``load(cfg, seed) -> Benchmark``: ``cfg`` has the
``BenchmarkConfig`` fields (a dataclass or an OmegaConf node), ``seed`` is the run's seed
(only used where the upstream option order leaks the answer). A format of free-form prompts
(no options: AdvBench, HarmBench, XSTest, ...) defines ``load_prompts(cfg) -> PromptSet``, ``cfg``
having the ``PromptsConfig`` fields; a module may define both. ``eas.data.load_benchmark`` and
``eas.data.load_prompts`` find the module through ``eas.extensions.load("format", ...)``: a
short name is a module of this package, a dotted name any module on ``sys.path``, so a new
format is one module plus one ``conf/benchmark/*.yaml`` or ``conf/prompts/*.yaml`` and is
listed nowhere. Shared reading (files, hub, field checks that name the file and line) is in
``eas.data.readers``.
"""
