"""Stage entry point: python launch/prepare.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli


def run(cfg):
    from cwpo_jax.stages import preflight, prepare

    summary = prepare.run(cfg)
    preflight.check_prepared_splits(cfg)  # refuse splits too small for a later stage now
    return summary


if __name__ == "__main__":
    _cli.main(run)
