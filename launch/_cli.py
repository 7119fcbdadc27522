"""Shared command line of the launch scripts: --config=configs/x.py --config.a.b=value.

A mistake in the input (command line, config, a missing or unreadable file, too little data)
ends the run with one line on stderr naming it and a non-zero exit; a traceback is printed only
for an error of a kind no check expects, under a line saying it is a bug.
"""
from __future__ import annotations

import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

BUG = "unexpected error: a bug (in cwpo_jax or the preset file), not a known input mistake:"


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _flag_value(argv, name: str) -> str | None:
    """The value of --name=VALUE or --name VALUE in argv."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _bad_override(argv, config_flag, error) -> str:
    """The line for an override naming no config field: ml_collections raises AttributeError or
    KeyError while parsing without saying which flag; try each override on the preset."""
    from ml_collections.config_flags import config_path

    preset = config_flag.parser.parse(_flag_value(argv, "config"))
    for arg in argv:
        if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            try:
                config_path.get_type(field, preset)
            except (AttributeError, KeyError) as e:
                hint = re.search(r'Did you mean "([^"]+)"', str(e))  # ml_collections' hint
                return (f"--config.{field}: no such config field"
                        + (f' (did you mean "{hint.group(1)}"?)' if hint else "")
                        + "; the fields are in cwpo_jax/stages/defaults.py")
    return f"--config: an override names no config field ({_one_line(error)})"


def _parse_flags(argv):
    """absl's flag parsing, with every command-line mistake as one line."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # a bad value, an unknown flag
        sys.exit(f"command line: {_one_line(e)}")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of no field
        sys.exit(_bad_override(argv, flags.FLAGS["config"], e))
    except OSError as e:  # the preset file
        preset = _flag_value(argv, "config") or ""
        presets = sorted(os.path.relpath(p)
                         for p in glob.glob(os.path.join(ROOT, "configs", "[!_]*.py")))
        sys.exit(f"--config={preset}: cannot load the preset file "
                 f"({_one_line(str(e).splitlines()[-1])}); presets: {', '.join(presets)}")
    except Exception:
        print(BUG, file=sys.stderr)
        raise


def main(stage_fn, *, splits=()) -> None:
    """Run stage_fn(cfg) on the parsed config; `splits`: the stages whose splits must hold a
    batch before stage_fn starts (preflight.check_splits)."""
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
        from cwpo_jax.models.gguf_io import GGUFError
        from cwpo_jax.scores import ScoresError
        from cwpo_jax.stages import preflight
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
            preflight.check_inputs(cfg)
            if splits:
                preflight.check_splits(cfg, splits)
            stage_fn(cfg)
        except Preempted as e:
            print(e, file=sys.stderr)
            sys.exit(0)
        except preflight.InputError as e:
            sys.exit(str(e))
        except (NonFiniteError, CheckpointError, ScoresError, BadRowError, BadFileError,
                GGUFError) as e:
            # Errors that already say what is wrong and where: one message, no traceback.
            sys.exit(f"{type(e).__name__}: {e}")
        except OSError as e:
            # The machine, not the code: a missing path (an earlier stage's output not written
            # yet), no permission, a full disk, a hub that cannot be reached.
            sys.exit(f"{type(e).__name__}: {_one_line(e)}")
        except Exception:
            print(BUG, file=sys.stderr)
            raise

    app.run(run, flags_parser=_parse_flags)
