"""Test set-up shared by every test module.

Eight simulated CPU devices, so sharding tests run on any machine; code that is not sharded
explicitly still runs on the first device. This must happen before JAX initializes a backend.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
