"""Work-arounds that let TFDS 4.9 builders run without TensorFlow on Python >= 3.9."""
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
