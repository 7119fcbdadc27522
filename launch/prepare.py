"""Stage entry point: python launch/prepare.py --config=configs/<preset>.py --config.output_dir=DIR"""
import _cli

if __name__ == "__main__":
    from cwpo_jax.stages import prepare

    _cli.main(prepare.run)
