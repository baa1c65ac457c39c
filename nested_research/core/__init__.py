"""What every other package shares, with no TensorFlow and no Keras: the error type of bad
configuration (:mod:`.errors`), argument checks (:mod:`.checks`) and the typed parameter groups
built on them (:mod:`.hparams`), atomic file writes (:mod:`.files`), host-side step counting
(:mod:`.steps`), the command-line console (:mod:`.console`), where the Hydra configs are
(:mod:`.configs`) and the versions a run records (:mod:`.environment`).  It imports no other
package.
"""
