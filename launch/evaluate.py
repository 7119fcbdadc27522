"""Stage entry point: python launch/evaluate.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import evaluate

    _cli.main(evaluate.run, splits=("eval",))
