"""Makes TFDS 4.9 builders prepare and read array_record datasets without TensorFlow."""

import sys

from etils import epath
import tensorflow_datasets as tfds


class ModuleFileCodePath:
  """Mixin for a `tfds.core.GeneratorBasedBuilder` defined in a package module.

  TFDS 4.9.10 locates a builder's code (for its checksums file) through the `importlib_resources`
  backport, which it only installs on Python < 3.9, so `download_and_prepare` fails with
  "No module named 'importlib_resources'". The answer it looks for is simply the module's file.
  Put this mixin first: `class MyBuilder(ModuleFileCodePath, tfds.core.GeneratorBasedBuilder)`.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(sys.modules[cls.__module__].__file__)


class ArrayRecordByDefault:
  """Mixin: the builder writes array_record unless asked for another file format.

  `tfds.data_source(name, data_dir=...)` passes no file format when given a data_dir, and TFDS's
  default (tfrecord) needs TensorFlow to write, so generating a dataset through `data_source`
  (download=True on a dataset not yet prepared) would fail without this.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)


class NoTensorFlowMixin(ArrayRecordByDefault, ModuleFileCodePath):
  """Both work-arounds: `class MyBuilder(NoTensorFlowMixin, tfds.core.GeneratorBasedBuilder)`."""
