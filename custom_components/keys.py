"""Keys of the custom components' inputs, outputs and execution properties.

The artifact keys TFX's standard components share are TFX's own constants, so a
Resolver, Pusher or metadata query names them the same way.
"""
from tfx.types import standard_component_specs

# Artifacts.
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
MODEL_KEY = standard_component_specs.MODEL_KEY
BASE_MODEL_KEY = standard_component_specs.BASE_MODEL_KEY
BASELINE_MODEL_KEY = standard_component_specs.BASELINE_MODEL_KEY
MODEL_RUN_KEY = standard_component_specs.MODEL_RUN_KEY
BLESSING_KEY = standard_component_specs.BLESSING_KEY
EVALUATION_KEY = standard_component_specs.EVALUATION_KEY
PUSHED_MODEL_KEY = standard_component_specs.PUSHED_MODEL_KEY
INTERACTIONS_KEY = "interactions"

# Execution properties: configuration sections (as JSON) and values.
DATA_KEY = "data"
ENVIRONMENT_KEY = "environment"
AGENT_KEY = "agent"
SAMPLES_KEY = "samples"
EVENT_TIME_KEY = "event_time"
WAREHOUSE_KEY = "warehouse"
TRAIN_BATCH_SIZE_KEY = "train_batch_size"
EPOCHS_KEY = "epochs"
WARM_START_KEY = "warm_start"
WINDOW_END_KEY = "window_end"
GATE_METRICS_KEY = "gate_metrics"
GATE_TOLERANCE_KEY = "gate_tolerance"
BOOTSTRAP_SAMPLES_KEY = "bootstrap_samples"
SEED_KEY = "seed"
