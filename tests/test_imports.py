import subprocess
import sys


def test_losses_and_confidence_import_only_jax_and_numpy():
    code = (
        "import sys; from cwpo_jax import losses, confidence; "
        "heavy = [m for m in ('flax', 'optax', 'orbax', 'transformers', 'torch', 'tensorflow', "
        "'grain', 'tensorflow_datasets') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing the losses pulled in: {out.stdout.strip()}"
