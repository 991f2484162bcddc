"""helpers: compress language models and measure what the compression really costs.

Layers (imports go down only; CONTRIBUTING.md says how to add a method, a task or an experiment):

    models, data, results, plotting   foundation
    compression/    algorithms over one layer, the storage model, the layer-wise engine, methods, schedules
    evaluation/     metrics (perplexity, KL) and tasks (registered kinds)
    experiments/    core (variants, checked snapshot, runner, reader), longcontext, kick
    running/        cli (`python -m helpers`), reproduce (`make reproduce`), sweep
"""
__version__ = "0.1.0"
