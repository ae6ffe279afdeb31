"""Execution properties that are concrete locally and Vertex pipeline parameters in production."""
from typing import Union

from tfx.orchestration import data_types

FloatParameter = Union[float, data_types.RuntimeParameter]
IntParameter = Union[int, data_types.RuntimeParameter]


def float_or_parameter(value: FloatParameter) -> FloatParameter:
  return value if isinstance(value, data_types.RuntimeParameter) else float(value)


def int_or_parameter(value: IntParameter) -> IntParameter:
  return value if isinstance(value, data_types.RuntimeParameter) else int(value)
