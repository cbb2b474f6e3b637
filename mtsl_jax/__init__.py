"""mtsl_jax: Multi-Task Split Learning and its baselines as a functional JAX codebase.

Entry point: `mtsl_jax.train.train_and_evaluate(config, workdir)`; configs start from
`mtsl_jax.config_base.base_config()`. See README.md and docs/algorithm.md.
"""
