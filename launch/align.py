"""Stage entry point: python launch/align.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import align

    _cli.main(align.run, splits=("align",))
