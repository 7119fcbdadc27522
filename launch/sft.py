"""Stage entry point: python launch/sft.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import sft

    _cli.main(sft.run, splits=("sft",))
