"""Stage entry point: python launch/train_annotator.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import annotator

    _cli.main(annotator.run, splits=("annotator",))
