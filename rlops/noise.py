"""What the libraries under rlops print that is no news to a user, silenced where it is made."""
import os
import warnings


def quiet_libraries() -> None:
  """Silences TensorFlow's C++ start-up logs (CUDA factories on a machine without a GPU),
  the Google clients' notices about their own Python and grpcio support, TF-Agents'
  SyntaxWarnings, Gym's notice (TF-Agents imports Gym), and TensorFlow's notice that a
  saved policy's distribution needs TensorFlow Probability to load (it is installed).
  Call it before those libraries are imported; every process that imports them (a
  spawned worker too) calls it for itself."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")
  warnings.filterwarnings("ignore", category=SyntaxWarning, message=r'"is( not)?" with a literal')
  warnings.filterwarnings("ignore", category=UserWarning,
                          message="Encoding a StructuredValue with type tfp.distributions")
  import gym_notices.notices  # pylint: disable=import-outside-toplevel
  gym_notices.notices.notices.clear()
