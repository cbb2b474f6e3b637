"""Data for mtsl_jax: sources loaded once to host numpy, split into per-client tasks.

`build_federation(config.data, config.seed)` gives the host-side `Federation`, from a
source partitioned among clients or from user-given client splits (`client_splits.py`);
`to_device` pads it into `ClientArrays`; `sample_batches` draws per-client minibatches
on device. `check_federation(federation, config)` checks a built federation against the
whole experiment config (finite float32 inputs, label ranges, evaluation examples, input
rank for the model) before anything compiles.
"""

from mtsl_jax.data.checks import check_federation
from mtsl_jax.data.client_splits import load_client_splits
from mtsl_jax.data.federation import build_federation
from mtsl_jax.data.federation import build_federation_from_datasets
from mtsl_jax.data.federation import ClientArrays
from mtsl_jax.data.federation import Federation
from mtsl_jax.data.federation import padded_length
from mtsl_jax.data.federation import sample_batches
from mtsl_jax.data.federation import to_device
from mtsl_jax.data.federation import to_host
from mtsl_jax.data.normalization import NORMALIZATIONS
from mtsl_jax.data.sources import ArrayDataset
from mtsl_jax.data.sources import DataError
from mtsl_jax.data.sources import load_npz
from mtsl_jax.data.sources import load_tfds
from mtsl_jax.data.sources import load_tfds_split
