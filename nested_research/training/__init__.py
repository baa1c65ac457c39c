"""Training one job: what it builds from its config (:mod:`.builders`; the nested optimizer's
own groups: :mod:`.config_groups`), what it checks before writing anything (:mod:`.preflight`),
the job itself (:mod:`.job`), the fit loop (:mod:`.fit`) with its non-finite guard
(:mod:`.guard`) and statistics window (:mod:`.stats_window`), and checkpoints: their files
(:mod:`.checkpoint_files`), the callback that writes them (:mod:`.checkpoint_callback`) and
resuming from one (:mod:`.resume`).
"""
