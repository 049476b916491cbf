"""Objects named by import path in configs: `"package.module:Name"` (a class, a function)."""

import importlib
from typing import Any


def load_object(path: str, what: str = "object") -> Any:
  """`"package.module:Name"` (or `:Outer.Name`) -> the object; errors name `what` and path."""
  module_path, sep, attr = str(path).partition(":")
  if not sep or not module_path or not attr:
    raise ValueError(f"{what} {path!r} must be 'package.module:Name'.")
  try:
    module = importlib.import_module(module_path)
  except ImportError as e:
    raise ImportError(f"{what} {path!r}: cannot import {module_path!r} ({e}).") from e
  obj = module
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise AttributeError(f"{what} {path!r}: {module_path} has no {attr!r}.")
    obj = getattr(obj, part)
  return obj
