"""Stage entry point: python launch/score.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import score

    _cli.main(score.run, splits=("score",))
