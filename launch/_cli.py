"""Shared command line of the launch scripts: --config=configs/x.py --config.a.b=value."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)


def main(stage_fn) -> None:
    from absl import app
    from ml_collections import config_flags

    config = config_flags.DEFINE_config_file("config", None, "preset file, e.g. configs/tiny.py",
                                             lock_config=True)

    def run(argv):
        del argv
        from absl import logging

        logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
        import jax

        # Stages and methods compile the same programs again: keep compiled XLA on disk.
        cache = os.environ.get("CWPO_COMPILATION_CACHE",
                               os.path.join(os.path.expanduser("~"), ".cache", "cwpo_jax", "xla"))
        if cache:
            jax.config.update("jax_compilation_cache_dir", cache)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

        from cwpo_jax import sharding
        from cwpo_jax.data import BadFileError, BadRowError
        from cwpo_jax.scores import ScoresError
        from cwpo_jax.stages.config import ConfigError, validate
        from cwpo_jax.train.checkpoint import CheckpointError
        from cwpo_jax.train.loop import NonFiniteError, Preempted

        cfg = config.value
        if cfg is None:
            sys.exit("missing --config=configs/<preset>.py")
        sharding.maybe_initialize_distributed()
        try:
            validate(cfg, num_devices=jax.device_count())
        except ConfigError as e:
            sys.exit(f"invalid config:\n{e}")
        try:
            stage_fn(cfg)
        except Preempted as e:
            print(e, file=sys.stderr)
            sys.exit(0)
        except (NonFiniteError, CheckpointError, ScoresError, BadRowError, BadFileError) as e:
            # Errors that already say what is wrong and where: one message, no traceback.
            sys.exit(f"{type(e).__name__}: {e}")

    app.run(run)
