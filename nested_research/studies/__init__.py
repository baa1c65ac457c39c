"""Studies that compare optimizers: running grids of jobs with resume (:mod:`.runner`), the
learning-rate search (:mod:`.lr_search`), AlgoPerf-style scoring (:mod:`.scoring`), paired
differences against a reference with bootstrap intervals (:mod:`.paired`), continual-learning
metrics from an accuracy matrix (:mod:`.continual_metrics`) and plots (:mod:`.plots`), the
process pool they train in (:mod:`.processes`), the W&B sweep files run locally
(:mod:`.sweep`), the command line the studies share (:mod:`.command`), and the studies
themselves: :mod:`.comparison`, :mod:`.ablation`, :mod:`.horizon`, and all of them in one
command (:mod:`.run_all`).
"""
