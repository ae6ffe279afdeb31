"""Keys of the custom components' inputs, outputs and execution properties.

The artifact keys the components share with TFX's standard ones have TFX's values
(keys_test checks them against `tfx.types.standard_component_specs`), so a
Resolver, Pusher or metadata query names them the same way. Plain strings: ML
Metadata queries import this without TFX or TensorFlow.
"""
# Artifacts.
EXAMPLES_KEY = "examples"
MODEL_KEY = "model"
BASE_MODEL_KEY = "base_model"
BASELINE_MODEL_KEY = "baseline_model"
MODEL_RUN_KEY = "model_run"
BLESSING_KEY = "blessing"
EVALUATION_KEY = "evaluation"
PUSHED_MODEL_KEY = "pushed_model"
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
SPAN_KEY = "span"
GATE_METRICS_KEY = "gate_metrics"
GATE_TOLERANCE_KEY = "gate_tolerance"
BOOTSTRAP_SAMPLES_KEY = "bootstrap_samples"
SEED_KEY = "seed"
