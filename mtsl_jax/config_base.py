"""The complete configuration schema of mtsl_jax, with documented defaults.

Every experiment config in `configs/` starts from `base_config()` and overrides a few
fields, so this file is the single reference for what a field means and what it accepts.
`mtsl_jax.validation.validate_config` checks a config against the choices listed here
before anything is loaded or compiled: every value must have its default's Python type
(an int field takes a Python int, not True and not a numpy integer), and sizes, counts,
intervals and the seed have documented upper bounds (validation.py, "Upper bounds").
Config files and `--config.field=value` overrides are read by `mtsl_jax.config_files`.
"""

import ml_collections


def optimizer_config(name: str = "sgd", learning_rate: float = 0.1) -> ml_collections.ConfigDict:
  """One side's optimizer (server or clients).

  Args:
    name: 'sgd', 'momentum' (SGD with heavy-ball momentum), 'nesterov', 'adam' or 'adamw'.
    learning_rate: peak learning rate (> 0).

  Returns:
    A ConfigDict with fields name, learning_rate, schedule ('constant', 'cosine',
    'warmup_cosine', 'linear'), warmup_steps, momentum (used by momentum/nesterov),
    weight_decay (decoupled, >= 0), grad_clip_norm (0 disables clipping) and
    learning_rate_in_state (hold the rate in the optimizer state, so runs differing only
    in it share one program; see `optimizers.make_optimizer`).
  """
  return ml_collections.ConfigDict(dict(
      name=name,
      learning_rate=learning_rate,
      schedule="constant",
      warmup_steps=0,
      momentum=0.9,
      weight_decay=0.0,
      grad_clip_norm=0.0,
      learning_rate_in_state=False,
  ))


def base_config() -> ml_collections.ConfigDict:
  """All fields with their defaults: MTSL on the embedded Synthetic(1, 1) data."""
  c = ml_collections.ConfigDict()
  c.seed = 0                        # in [0, 2**32 - 1], the range of JAX's PRNG keys
  c.algorithm = "mtsl"

  # ---- data -------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # 'synthetic' | 'tfds' | 'npz' (one pool, partitioned below) | 'client_dir' |
  # 'client_npz' (your own clients, used as given: see client_path)
  c.data.source = "synthetic"
  # tfds: a dataset name, or several joined by ',' (a federation mixing datasets: the
  # clients are divided into contiguous groups, one per dataset, as evenly as possible).
  c.data.name = "mnist"
  c.data.tfds_data_dir = ""         # '' means TFDS's default data_dir
  c.data.npz_path = ""              # arrays x_train, y_train, x_test, y_test
  # User-given client splits, used exactly as given: no partitioning, no test resampling
  # (mtsl_jax/data/client_splits.py). client_dir: a directory of client_<m>.npz files,
  # m = 0..M-1, each with x_train, y_train, x_test, y_test. client_npz: one .npz file with
  # x_train, y_train, client_train, x_test, y_test, client_test (each example's client
  # id). num_clients must equal the M found; the partition fields are not used.
  c.data.client_path = ""
  # Raw inputs -> the model's float32 inputs, statistics fitted on the pooled train
  # inputs (tfds, npz, client_dir, client_npz; mtsl_jax/data/normalization.py): 'auto'
  # (uint8 images: scaled to [0, 1], then per-channel standardized; other inputs: per
  # feature) | 'none' (as given, cast to float32) | 'scale_-1_1' | 'per_channel' |
  # 'per_pixel'. Synthetic data are used as drawn ('auto' or 'none').
  c.data.normalization = "auto"
  c.data.num_clients = 10
  c.data.partition = "iid"          # 'iid' | 'dirichlet' | 'shards' (not used by synthetic)
  c.data.dirichlet_alpha = 0.5      # label skew: smaller is more heterogeneous
  c.data.classes_per_client = 2     # shards: each client holds exactly this many classes
  c.data.min_examples_per_client = 10
  c.data.max_examples_per_client = 0  # cap on each client's train examples; 0 = no cap
  # Validation split, for tuning: this share of each client's train examples is held out
  # (never trained on). evaluate_on = 'validation' evaluates on it instead of the test set
  # (the records keep their 'test/' names); 'test' keeps the test set.
  c.data.validation_fraction = 0.0
  c.data.evaluate_on = "test"       # 'test' | 'validation'
  # Cap on each client's evaluated examples (test or validation): a uniform random subset
  # drawn once per seed, for runs that evaluate often on a slow machine; 0 = all of them.
  c.data.max_eval_examples_per_client = 0
  # Per-client transforms, applied to a client's train and test data alike.
  c.data.label_permutation = False  # client m relabels classes by its own permutation
  c.data.rotation_step_degrees = 0.0  # client m's images rotated by m * step degrees
  c.data.feature_noise_std = 0.0    # Gaussian noise added to the (standardized) inputs
  c.data.label_noise_rate = 0.0     # fraction of TRAIN labels replaced by another class
  c.data.noise_profile = "constant"  # 'constant': every client gets the value above;
                                     # 'linear': client m gets value * m / (M - 1)
  c.data.synthetic = ml_collections.ConfigDict(dict(
      alpha=1.0,              # spread of the clients' true models
      beta=1.0,               # spread of the clients' input means
      num_features=60,
      num_classes=10,
      min_classes=0,          # > 0: label-space sizes spaced from min_classes to num_classes
      examples_lognormal_mean=4.0,   # client sizes ~ lognormal(mean, sigma) + 50, as FedProx
      examples_lognormal_sigma=2.0,
      max_examples=1000,      # cap per client (train + test) before the split
      test_fraction=0.2,
  ))

  # ---- model and split ---------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"              # 'mlp' | 'cnn' | 'resnet'
  c.model.hidden_sizes = (64, 64)   # mlp: one block per hidden layer, then a head block
  c.model.cnn_features = (32, 64)   # cnn: conv5x5 blocks, then dense and head blocks
  c.model.cnn_dense = 512
  # cnn: 'same' keeps each block's side before its 2x2 pool; 'valid' is the FedAvg CNN of
  # McMahan et al. as PFLlib and LEAF implement it (MNIST: 582k parameters, not 1.66M).
  c.model.padding = "same"
  # 'flax' (LeCun normal weights, zero biases) | 'torch' (PyTorch's default uniform fan-in
  # init of weights and biases, to reproduce peers' settings).
  c.model.init = "flax"
  c.model.resnet_widths = (16, 32, 64)  # resnet: stem, one block per stage, head
  c.model.resnet_blocks_per_stage = 1
  c.model.dtype = "float32"         # compute dtype: 'float32' | 'bfloat16'
  # Convolutions: 'xla' (lax.conv), 'patches' (shifted views + one matmul; much faster on
  # CPU, above all vmapped over clients) or 'auto' (patches on CPU, xla on GPU/TPU).
  c.model.conv_impl = "auto"
  # Clients of different widths (mtsl only; mlp or cnn): () = every client the same model;
  # else ((M_1, r_1), (M_2, r_2), ...) with Σ M_g = data.num_clients: the next M_g clients,
  # in client order, form group g, whose free client blocks (every client bottom block but
  # the one at the cut, every client top block but the head) have r_g times the configured
  # width (rounded, >= 1). The cut shapes and the server part stay as configured.
  c.model.client_width_groups = ()

  c.split = ml_collections.ConfigDict()
  # 'bottom': clients hold the input blocks, the server the rest and the loss.
  # 'top': the server holds the input blocks, clients hold the head and the loss.
  # 'u_shaped': clients hold input blocks and head; raw data and labels stay home.
  c.split.orientation = "u_shaped"
  c.split.client_bottom_blocks = 1
  c.split.client_top_blocks = 1
  c.split.task_weights = "uniform"  # 'uniform' | 'data_size' (w_m in the objective)
  c.split.implementation = "fused"  # 'fused' | 'protocol' (message by message)
  c.split.client_lr_multipliers = ()  # () or one positive float per client
  # Client rates scaled per client on top of the multipliers: 'none', or 'data_size'
  # (client m's rate times n_m / mean n: clients with more data take larger steps).
  c.split.client_lr_scaling = "none"
  # Ablations of the shared part: the server part kept at its initialization (its
  # updates are zero: random features), and every client's part starting from one
  # initialization ('common', client 0's) instead of one per client ('independent').
  c.split.freeze_server = False
  c.split.client_init = "independent"

  # ---- defences at the cuts (mtsl only; mtsl_jax/cut_defences.py, docs/privacy.md) -----
  c.privacy = ml_collections.ConfigDict()
  # Gaussian noise (std) added to every element of the smashed data a client bottom
  # sends up ('bottom', 'u_shaped'); the server sees and trains on the noisy data.
  c.privacy.smashed_noise_std = 0.0
  # NoPeek: each client bottom also minimizes this weight x dCor(inputs, smashed data)
  # over its minibatch ('bottom', 'u_shaped').
  c.privacy.nopeek_weight = 0.0
  # Label protection ('u_shaped', 'top'): each example's cut-layer gradient a client
  # head sends up is clipped to this L2 norm (0: no clipping), then Gaussian noise of
  # this std is added to every element. The gradient is that of the batch-mean loss, so
  # an example's is about 1/batch_size of its own loss gradient: scale both with it.
  c.privacy.cut_grad_clip = 0.0
  c.privacy.cut_grad_noise_std = 0.0

  # ---- optimization ------------------------------------------------------------------
  c.server_optimizer = optimizer_config("sgd", 0.1)
  c.client_optimizer = optimizer_config("sgd", 0.1)
  c.batch_size = 32                 # per client per step
  c.num_steps = 1000

  # ---- loop --------------------------------------------------------------------------
  c.log_every = 100
  c.eval_every = 500
  c.checkpoint_every = 500
  c.eval_batch_size = 512           # most test examples per client per evaluation chunk
                                    # (fewer if a chunk would pass EVAL_MEMORY_BYTES)
  c.max_checkpoints_to_keep = 2
  c.progress_bar = True
  # Run the same steps without jit, op by op, to step through them in a debugger
  # (`--config.disable_jit=True`; as slow as it sounds). Numbers equal the jitted run's up
  # to float rounding.
  c.disable_jit = False

  # ---- federated and split-federated baselines (mtsl_jax/algorithms/, docs/algorithms.md)
  c.fl = ml_collections.ConfigDict()
  # Local steps per round: client optimizer steps (fedavg, fedrep's body, fedem) or split
  # steps (splitfed_v1/v2) between two averagings. One loop step (num_steps) is one round.
  c.fl.local_steps = 5
  # Local work in epochs instead (0: off, fl.local_steps counts it): each round client m
  # takes ceil(n_m / batch_size) x local_epochs steps, passing over its own train examples
  # without replacement in a fresh order per epoch (an epoch's last batch is smaller when
  # batch_size does not divide n_m); fl.local_steps is then unused. fedavg, fedrep (its
  # body steps; the head takes fl.fedrep_head_steps), fedem, splitfed_v1/v2.
  c.fl.local_epochs = 0
  # Weights of the FedAvg family's averages (fedavg, fedrep, fedem: the clients' models;
  # splitfed_v1/v2: the client-side models and v1's server-side copies), renormalized over
  # the sampled clients: 'data_size' (n_m / Σ n, standard FedAvg) or 'uniform' (1/M).
  # split.task_weights stays the weights of MTSL's (and centralized's) objective.
  c.fl.aggregation_weights = "data_size"
  # Fraction of the clients sampled per round; S = max(1, round(fraction * M)) clients,
  # uniformly without replacement. The ledger reports expected bytes per client.
  c.fl.client_fraction = 1.0
  c.fl.fedrep_head_blocks = 1       # fedrep: last blocks kept personal (0: it is fedavg)
  c.fl.fedrep_head_steps = 5        # fedrep: head steps (body frozen) before the body steps
  c.fl.num_components = 3           # fedem: shared component models mixed per client

  # ---- devices -----------------------------------------------------------------------
  c.parallel = ml_collections.ConfigDict()
  # Devices the client axis is sharded over: 1 = one device, 0 = all devices, N = the
  # first N (data.num_clients must be divisible by it). The server part is replicated.
  c.parallel.client_devices = 1
  return c
