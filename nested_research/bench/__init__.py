"""Benchmarks whose output the README quotes: the optimizer's step time and memory against Adam
(:mod:`.optimizer`) and the cost of tracking (:mod:`.tracking`).  Each is a command,
``python -m nested_research.bench.<name>``.
"""
