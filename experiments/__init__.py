"""scalelab experiments: deploy each stack, load it, diagnose it, price it, report it.

Keep this file import-free: the load driver's child process must not pull in boto3 or Pulumi.
The layers: `stacks/` (variant model, instance catalog, Pulumi components) knows nothing of
`experiments/`; `experiments/` imports `stacks`.
"""
