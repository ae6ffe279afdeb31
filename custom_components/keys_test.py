"""The components' keys agree with TFX's, and importing them needs no TensorFlow."""
import subprocess
import sys

from tfx.types import standard_component_specs

from custom_components import keys


def test_shared_keys_are_tfx_keys():
  for name in ("EXAMPLES_KEY", "MODEL_KEY", "BASE_MODEL_KEY", "BASELINE_MODEL_KEY",
               "MODEL_RUN_KEY", "BLESSING_KEY", "EVALUATION_KEY", "PUSHED_MODEL_KEY"):
    assert getattr(keys, name) == getattr(standard_component_specs, name)


def test_metadata_queries_import_no_tensorflow():
  code = ("import sys\n"
          "from tfx_pipeline import metadata\n"
          "from rlops import workdirs\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'tfx'}))\n")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
  assert result.stdout.strip() == "[]"
